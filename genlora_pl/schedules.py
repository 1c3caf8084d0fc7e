"""Schedules: annealing of the adapters' ``gate`` / ``temperature``, and an LR warm-up schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

KINDS = ("constant", "linear", "cosine")


@dataclass
class Schedule:
    """A value that moves from ``start`` to ``end`` over the first ``fraction`` of training.

    Args:
        kind: ``constant`` (always ``start``), ``linear`` or ``cosine`` (half-cosine ease).
        start: value at step 0.
        end: value from ``fraction`` of the total steps on.
        fraction: share of training over which the value moves, in (0, 1].
    """

    kind: str = "constant"
    start: float = 1.0
    end: float = 1.0
    fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind={self.kind!r} is not valid; choose one of {', '.join(KINDS)}.")
        if not 0 < self.fraction <= 1:
            raise ValueError(f"schedule fraction={self.fraction!r} is not valid; it must lie in (0, 1].")
        for name in ("start", "end"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"schedule {name}={getattr(self, name)!r} is not valid; give a finite number.")

    def value(self, step: int, total_steps: int | float) -> float:
        """The value at ``step`` of ``total_steps`` (an infinite total keeps ``start``)."""
        if self.kind == "constant" or not math.isfinite(total_steps) or total_steps <= 0:
            return self.start
        t = min(1.0, step / (self.fraction * total_steps))
        if self.kind == "cosine":
            t = 0.5 * (1 - math.cos(math.pi * t))
        return self.start + (self.end - self.start) * t


class WarmupDecay(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up, then linear or cosine decay to ``min_ratio`` of the base LR.

    The total number of steps is filled in by the module from the trainer
    (``estimated_stepping_batches``), so configs need not repeat it.

    Args:
        optimizer: the optimizer.
        warmup_fraction: share of the steps spent warming up.
        decay: ``linear``, ``cosine`` or ``constant``.
        min_ratio: final LR as a share of the base LR.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        warmup_fraction: float = 0.1,
        decay: str = "linear",
        min_ratio: float = 0.0,
    ) -> None:
        if decay not in KINDS:
            raise ValueError(f"decay={decay!r} is not valid; choose one of {', '.join(KINDS)}.")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"warmup_fraction={warmup_fraction!r} is not valid; it must lie in [0, 1).")
        self.warmup_fraction, self.decay, self.min_ratio = warmup_fraction, decay, min_ratio
        self.total_steps = 0
        super().__init__(optimizer, self.factor)

    def set_total_steps(self, total: int) -> None:
        """Fix the length of training and re-apply the factor of the current step."""
        self.total_steps = total
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * self.factor(self.last_epoch)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def factor(self, step: int) -> float:
        if self.total_steps <= 0:
            return 1.0
        warmup = int(self.warmup_fraction * self.total_steps)
        if step < warmup:
            return (step + 1) / warmup
        if self.decay == "constant":
            return 1.0
        t = min(1.0, (step - warmup) / max(1, self.total_steps - warmup))
        shape = 1 - t if self.decay == "linear" else 0.5 * (1 + math.cos(math.pi * t))
        return self.min_ratio + (1 - self.min_ratio) * shape

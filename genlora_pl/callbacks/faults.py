"""``FaultTolerance``: a fit that is killed, preempted or diverges loses nothing it had.

The CLI always adds it (section ``faults``); add it to ``Trainer(callbacks=...)`` in Python code.

- Checkpoints are written by :class:`~genlora_pl.checkpoints.AtomicCheckpointIO` (temp file beside
  the target, fsync, rename) and loaded with ``weights_only=True``, unless the strategy already
  has a ``CheckpointIO`` plugin of the user's.
- Exact resumption mid-epoch: the data modules' ``StatefulDataLoader`` puts its position in the
  checkpoint (Lightning saves and restores it); this callback adds the torch / numpy / Python RNG
  states and puts them back at the first training batch of the resumed fit, so dropout draws the
  same masks as in an uninterrupted run. (Random data augmentation is the one thing not replayed:
  its draws interleave with Lightning's prefetching of the next batch, or run in loader workers.)
- SIGTERM, what schedulers send before they kill a job: Lightning stops at the end of the current
  optimizer step (every rank together) and this callback saves the full training state to
  ``last.ckpt`` in the checkpoint folder, then the run exits with status 143.
- A NaN or Inf loss stops the run before the backward pass, so no update is applied, with one
  sentence naming the step and the last good checkpoint; a checkpoint whose trainable parameters are
  not finite is never written, so the last good one is not replaced by garbage.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from genlora_pl.checkpoints import install_atomic_io


class TrainingDiverged(FloatingPointError):
    """The loss or the trained parameters stopped being finite."""


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        # plain types only: weights_only loading refuses numpy arrays
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def last_good_checkpoint(trainer: L.Trainer) -> str | None:
    """The newest checkpoint file the run has written, if any."""
    paths = []
    for callback in trainer.checkpoint_callbacks:
        paths += [getattr(callback, "last_model_path", ""), getattr(callback, "best_model_path", "")]
    existing = [Path(p) for p in paths if p and Path(p).exists()]
    return str(max(existing, key=lambda p: p.stat().st_mtime)) if existing else None


class FaultTolerance(L.Callback):
    """Survive preemption, crashes and divergence (see the module docstring).

    Args:
        atomic_checkpoints: write checkpoints atomically and load them with ``weights_only=True``.
        restore_rng: save the RNG states with checkpoints and restore them on resume.
        checkpoint_on_sigterm: save ``last.ckpt`` when the job receives SIGTERM.
        stop_on_nonfinite: stop at the first NaN / Inf loss; refuse to save non-finite parameters.
    """

    def __init__(
        self,
        atomic_checkpoints: bool = True,
        restore_rng: bool = True,
        checkpoint_on_sigterm: bool = True,
        stop_on_nonfinite: bool = True,
    ) -> None:
        super().__init__()
        self.atomic_checkpoints = atomic_checkpoints
        self.restore_rng = restore_rng
        self.checkpoint_on_sigterm = checkpoint_on_sigterm
        self.stop_on_nonfinite = stop_on_nonfinite
        self._rng_to_restore: dict[str, Any] | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # setup runs before the strategy loads a ckpt_path, so the load already goes through it
        if self.atomic_checkpoints:
            install_atomic_io(trainer.strategy)

    # ----------------------------------------------------------------- resumption
    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_state()} if self.restore_rng else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._rng_to_restore = state.get("rng") if self.restore_rng else None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        # Not at load time: between the load and the first batch Lightning runs the sanity check and
        # builds the loader iterator, which an uninterrupted run did before its checkpoint.
        if self._rng_to_restore is not None:
            _set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    # ----------------------------------------------------------------- divergence
    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not self.stop_on_nonfinite:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.world_size > 1:  # every rank stops together, or the others hang in the all-reduce
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            value = loss.detach().float().mean().item()
            where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
            raise TrainingDiverged(
                f"the training loss became {value if not math.isfinite(value) else 'non-finite'} at {where}; "
                f"the run stopped before applying that update ({self._kept(trainer)}). Lower the learning rate "
                "or set trainer.gradient_clip_val."
            )

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if not self.stop_on_nonfinite:
            return
        bad = [n for n, p in pl_module.named_parameters() if p.requires_grad and not _finite(p)]
        any_bad = trainer.strategy.reduce_boolean_decision(bool(bad), all=False) if trainer.world_size > 1 else bad
        if any_bad:
            raise TrainingDiverged(
                f"trained parameters such as {bad[:2] or 'on another rank'} are NaN or Inf at step "
                f"{trainer.global_step}; the checkpoint was not written ({self._kept(trainer)}). Lower the "
                "learning rate or set trainer.gradient_clip_val."
            )

    @staticmethod
    def _kept(trainer: L.Trainer) -> str:
        last = last_good_checkpoint(trainer)
        return f"the last good checkpoint is {last}" if last else "no checkpoint had been saved yet"

    # ----------------------------------------------------------------- preemption
    def sigterm_path(self, trainer: L.Trainer) -> Path:
        """``last.ckpt`` in the checkpoint folder (the first ``ModelCheckpoint``'s), else in
        ``default_root_dir``."""
        folder = getattr(trainer.checkpoint_callback, "dirpath", None) or trainer.default_root_dir
        return Path(folder) / "last.ckpt"

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        sigterm = isinstance(exception, SIGTERMException)
        # Only SIGTERM: Lightning raises it between optimizer steps, so the state is consistent.
        # A KeyboardInterrupt or an error can land in the middle of an update.
        if not (self.checkpoint_on_sigterm and sigterm):
            return
        if trainer.state.fn != "fit":  # validate / test / predict have no training state to keep
            return
        path = self.sigterm_path(trainer)
        # before saving: the resumed run's ModelCheckpoint then knows last.ckpt as its own and
        # overwrites it, instead of starting last-v1.ckpt beside it (the next requeue would pick the stale one)
        for callback in trainer.checkpoint_callbacks:
            if getattr(callback, "save_last", False) and Path(callback.dirpath or "") == path.parent:
                callback.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)  # the full training state, not the weights alone
        if trainer.is_global_zero:
            print(
                f"SIGTERM: saved the training state at step {trainer.global_step} to {path}; "
                f"resume with --ckpt_path {path}",
                flush=True,
            )


def _finite(p: torch.Tensor) -> bool:
    local = p.to_local() if hasattr(p, "to_local") else p  # FSDP2 DTensor: each rank checks its shard
    return bool(torch.isfinite(local.detach()).all())

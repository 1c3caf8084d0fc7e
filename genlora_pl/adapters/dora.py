"""DoRA (Liu et al. 2024, arXiv 2402.09353): weight-decomposed low-rank adaptation, behind the same
interface as LoRA and GenLoRA.

The adapted weight is split into a magnitude per output row and a direction:

    W' = m * (W0 + s B A) / ||W0 + s B A||_row

``m`` (trainable, one number per output row) starts at ``||W0||_row`` and ``B`` at zero, so an injected
model computes what the base computed. As in the paper (section 4.3) and PEFT, the row norm is treated
as a constant in the backward pass (detached). The forward never forms ``W'``:

    y = (m / ||W0 + s B A||_row) * (W0 x + s B (A dropout(x))) + bias

(with dropout active, ``W0`` is applied to the dropped input too, as PEFT does). The update depends on
``W0``, so merging overrides the additive merge of the other methods, and the PEFT export adds the
magnitudes (``lora_magnitude_vector``) and ``use_dora``. Linear layers and transformers ``Conv1D``;
convolutions are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genlora_pl.adapters.lora import LoRAConfig, LoRALayer
from genlora_pl.adapters.registry import register


@dataclass
class DoRAConfig(LoRAConfig):
    """DoRA: LoRA's ``A`` and ``B`` for the direction, a trainable magnitude per output row."""

    name: ClassVar[str] = "dora"


class DoRALayer(LoRALayer):
    config: DoRAConfig
    param_kinds: ClassVar[dict[str, str]] = {"lora_A": "A", "lora_B": "B", "magnitude": "magnitude"}
    peft_config_extra: ClassVar[dict[str, Any]] = {"use_dora": True}

    def __init__(self, base_layer: nn.Module, config: DoRAConfig, path: str) -> None:
        super().__init__(base_layer, config, path)
        if self.kind not in ("linear", "conv1d"):
            raise TypeError(
                f"{path!r} is a {type(base_layer).__name__}; DoRA here adapts linear layers (nn.Linear, "
                "transformers Conv1D) only. Exclude it, or use lora or genlora for convolutions."
            )
        if base_layer.weight.device.type == "meta":
            raise ValueError(
                f"DoRA needs {path!r}'s base weights to set its magnitudes, and they are not loaded yet (an FSDP2 "
                "model built empty); use lora or genlora there, or a strategy that loads the model first."
            )
        self.magnitude = nn.Parameter(torch.empty(self.out_features, device=self.lora_A.device))
        self.__dict__["_merge_factor"] = None
        self.reset_magnitude()

    def base_matrix(self) -> torch.Tensor:
        """``W0`` as an ``(m, n)`` matrix, whatever the layer's layout."""
        weight = self.base_layer.weight
        return weight.T if self.kind == "conv1d" else weight

    @torch.no_grad()
    def reset_magnitude(self) -> None:
        self.magnitude.copy_(self.base_matrix().float().norm(dim=1))

    def norm_factor(self, dtype: torch.dtype) -> torch.Tensor:
        """``m / ||W0 + s B A||_row`` with the norm detached, in ``dtype``."""
        with torch.no_grad():
            norm = (self.base_matrix().float() + self.delta_matrix()).norm(dim=1)
        return (self.magnitude.float() / norm).to(dtype)

    def apply_update(
        self, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        bias = self.base_layer.bias
        without_bias = y if bias is None else y - bias.to(y.dtype)
        # dropout active: W0 sees the dropped input too (PEFT's choice)
        base = without_bias if h is x else F.linear(h, self.base_matrix().to(x.dtype))
        direction = base + F.linear(F.linear(h, a), b)
        out = self.norm_factor(x.dtype) * direction
        return out if bias is None else out + bias.to(out.dtype)

    # ----------------------------------------------------------------- merging
    @torch.no_grad()
    def merge(self, safe: bool = True) -> None:
        if self.merged:
            raise RuntimeError(f"adapter {self.path!r} is already merged; unmerge it first.")
        factor = self.norm_factor(torch.float32)
        merged = factor[:, None] * (self.base_matrix().float() + self.delta_matrix())
        if safe and not torch.isfinite(merged).all():
            raise ValueError(f"refusing to merge adapter {self.path!r}: the merged weight would contain NaN or Inf.")
        weight = self.base_layer.weight
        weight.copy_((merged.T if self.kind == "conv1d" else merged).to(weight.dtype))
        self.__dict__["_merge_factor"] = factor
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            raise RuntimeError(f"adapter {self.path!r} is not merged.")
        factor = self.__dict__["_merge_factor"]
        original = self.base_matrix().float() / factor[:, None] - self.delta_matrix()
        weight = self.base_layer.weight
        weight.copy_((original.T if self.kind == "conv1d" else original).to(weight.dtype))
        self.__dict__["_merge_factor"] = None
        self.merged = False

    def peft_state(self) -> dict[str, torch.Tensor]:
        return {"lora_magnitude_vector": self.magnitude.detach().float()}


register(DoRAConfig, DoRALayer)

"""A third adapter method, for tests only: LoRA with a frozen random ``A`` (LoRA-FA, Zhang et al.
2023). It is the whole method, in one file with one registration: nothing else in genlora_pl knows
about it, which is what tests/unit/adapters/test_third_method.py proves."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from genlora_pl.adapters import AdapterConfig, AdapterLayer, register


@dataclass
class LoRAFAConfig(AdapterConfig):
    """LoRA with a frozen ``A``.

    Args:
        a_scale: ``A`` is drawn from U(-a_scale / sqrt(n), a_scale / sqrt(n)) and never trained.
    """

    name: ClassVar[str] = "lora_fa"

    a_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.a_scale > 0:
            raise ValueError(f"a_scale={self.a_scale!r} is not valid; give a positive number.")


class LoRAFALayer(AdapterLayer):
    config: LoRAFAConfig

    def __init__(self, base_layer: nn.Module, config: LoRAFAConfig, path: str) -> None:
        super().__init__(base_layer, config, path)
        device = base_layer.weight.device
        self.register_buffer("frozen_A", torch.empty(config.r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.r, device=device))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        bound = self.config.a_scale / math.sqrt(self.in_features)
        a = torch.empty(self.frozen_A.shape).uniform_(-bound, bound, generator=self.generator())
        self.frozen_A.copy_(a)
        self.lora_B.zero_()

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.frozen_A, self.lora_B


register(LoRAFAConfig, LoRAFALayer)

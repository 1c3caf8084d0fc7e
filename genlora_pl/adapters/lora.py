"""The LoRA baseline (Hu et al. 2021) behind the same interface as GenLoRA.

``A`` (``r x n``) starts Kaiming-uniform(a=sqrt(5)) as in PEFT and loralib, ``B`` (``m x r``)
starts at zero, so comparisons with GenLoRA share scaling, merging, export and timing code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from genlora_pl.adapters.base import AdapterLayer, real_device
from genlora_pl.adapters.config import AdapterConfig
from genlora_pl.adapters.registry import register


@dataclass
class LoRAConfig(AdapterConfig):
    """The classic LoRA baseline: explicit ``A`` (Kaiming-uniform) and ``B`` (zero)."""

    name: ClassVar[str] = "lora"


class LoRALayer(AdapterLayer):
    config: LoRAConfig
    param_kinds: ClassVar[dict[str, str]] = {"lora_A": "A", "lora_B": "B"}  # LoRA+ gives B a larger rate

    def __init__(self, base_layer: nn.Module, config: LoRAConfig, path: str) -> None:
        super().__init__(base_layer, config, path)
        device = real_device(base_layer)
        self.lora_A = nn.Parameter(torch.empty(config.r, self.in_features, device=device))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, config.r, device=device))
        if device.type != "meta":
            self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        a = torch.empty(self.lora_A.shape, device="cpu")  # CPU generator, whatever the default device
        # kaiming_uniform_(a=sqrt(5)) draws U(-1/sqrt(n), 1/sqrt(n)); drawn from our own generator.
        bound = 1.0 / math.sqrt(self.in_features)
        a.uniform_(-bound, bound, generator=self.generator())
        self.lora_A.copy_(a)
        self.lora_B.zero_()

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lora_A, self.lora_B


register(LoRAConfig, LoRALayer)

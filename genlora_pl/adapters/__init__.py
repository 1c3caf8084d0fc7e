"""Adapter methods, chosen by name from a registry (``genlora``, ``lora``)."""

from __future__ import annotations

from genlora_pl.adapters.base import AdapterLayer
from genlora_pl.adapters.config import (
    AdapterConfig,
    GenLoRAConfig,
    LoRAConfig,
    config_class,
    config_from_dict,
)
from genlora_pl.adapters.genlora import GenLoRALayer
from genlora_pl.adapters.lora import LoRALayer

ADAPTERS: dict[str, type[AdapterLayer]] = {"genlora": GenLoRALayer, "lora": LoRALayer}


def adapter_class(name: str) -> type[AdapterLayer]:
    """The layer class registered under ``name``, or a ValueError listing the valid names."""
    config_class(name)  # raises the one-sentence error for unknown names
    return ADAPTERS[name]


__all__ = [
    "ADAPTERS",
    "AdapterConfig",
    "AdapterLayer",
    "GenLoRAConfig",
    "GenLoRALayer",
    "LoRAConfig",
    "LoRALayer",
    "adapter_class",
    "config_class",
    "config_from_dict",
]

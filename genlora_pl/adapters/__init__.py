"""Adapter methods, chosen by name from one registry (``genlora``, ``lora``).

Importing this package registers the built-in methods; a new method is one file with its config and
layer that calls :func:`register` (see ``tests/unit/adapters/test_third_method.py``).
"""

from __future__ import annotations

from genlora_pl.adapters.base import AdapterLayer
from genlora_pl.adapters.config import (
    METHODS,
    AdapterConfig,
    Method,
    config_class,
    config_differences,
    config_from_dict,
    method,
    register,
)
from genlora_pl.adapters.genlora import GenLoRAConfig, GenLoRALayer
from genlora_pl.adapters.lora import LoRAConfig, LoRALayer


def adapter_class(name: str) -> type[AdapterLayer]:
    """The layer class registered under ``name``, or a ValueError listing the valid names."""
    return method(name).layer


__all__ = [
    "METHODS",
    "AdapterConfig",
    "AdapterLayer",
    "GenLoRAConfig",
    "GenLoRALayer",
    "LoRAConfig",
    "LoRALayer",
    "Method",
    "adapter_class",
    "config_class",
    "config_differences",
    "config_from_dict",
    "method",
    "register",
]

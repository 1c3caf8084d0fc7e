"""Adapter methods, chosen by name from one registry (``genlora``, ``lora``, ``dora``).

Importing this package registers the built-in methods; a new method is one file with its config and
layer that calls :func:`register` (see ``tests/unit/adapters/lora_fa.py``), named on the command
line by its registered name once imported, or by its module's dotted path.
"""

from __future__ import annotations

from genlora_pl.adapters.base import AdapterLayer
from genlora_pl.adapters.config import AdapterConfig, config_differences
from genlora_pl.adapters.dora import DoRAConfig, DoRALayer
from genlora_pl.adapters.genlora import GenLoRAConfig, GenLoRALayer
from genlora_pl.adapters.lora import LoRAConfig, LoRALayer
from genlora_pl.adapters.registry import (
    METHODS,
    Method,
    adapter_class,
    config_class,
    config_from_dict,
    method,
    register,
)

__all__ = [
    "METHODS",
    "AdapterConfig",
    "AdapterLayer",
    "DoRAConfig",
    "DoRALayer",
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

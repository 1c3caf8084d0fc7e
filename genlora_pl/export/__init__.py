"""Exports: adapters as standard PEFT LoRA folders (:func:`export_peft`) and whole fit checkpoints
to merged, PEFT and adapter folders (:func:`export_checkpoint`, the ``export`` subcommand).

Imported lazily, so the ``export`` subcommand's arguments (:mod:`genlora_pl.export.cli`) are checked
before torch, Lightning and transformers are loaded.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "export_checkpoint": "genlora_pl.export.checkpoint",
    "restore_module": "genlora_pl.export.checkpoint",
    "export_peft": "genlora_pl.export.peft",
    "peft_config": "genlora_pl.export.peft",
    "peft_state_dict": "genlora_pl.export.peft",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

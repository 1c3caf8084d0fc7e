"""genlora_pl: fine-tune timm and transformers models with generative low-rank adapters.

The public API is imported lazily, so ``python -m genlora_pl --help`` answers before torch,
Lightning, timm and transformers are loaded.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "AdapterConfig": "genlora_pl.adapters",
    "GenLoRAConfig": "genlora_pl.adapters",
    "LoRAConfig": "genlora_pl.adapters",
    "inject_adapters": "genlora_pl.injection",
    "merge_adapters": "genlora_pl.injection",
    "unmerge_adapters": "genlora_pl.injection",
    "merge_and_unload": "genlora_pl.injection",
    "adapter_layers": "genlora_pl.injection",
    "adapter_state_dict": "genlora_pl.state",
    "load_adapter_state_dict": "genlora_pl.state",
    "save_adapter": "genlora_pl.state",
    "load_adapter": "genlora_pl.state",
    "export_peft": "genlora_pl.export",
    "parameter_report": "genlora_pl.spectra",
    "adapter_spectra": "genlora_pl.spectra",
    "effective_rank": "genlora_pl.spectra",
    "stable_rank": "genlora_pl.spectra",
    "energy_rank": "genlora_pl.spectra",
    "centre_drift": "genlora_pl.spectra",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'genlora_pl' has no attribute {name!r}")


if TYPE_CHECKING:
    from genlora_pl.adapters import AdapterConfig, GenLoRAConfig, LoRAConfig
    from genlora_pl.export import export_peft
    from genlora_pl.injection import (
        adapter_layers,
        inject_adapters,
        merge_adapters,
        merge_and_unload,
        unmerge_adapters,
    )
    from genlora_pl.spectra import (
        adapter_spectra,
        centre_drift,
        effective_rank,
        energy_rank,
        parameter_report,
        stable_rank,
    )
    from genlora_pl.state import adapter_state_dict, load_adapter, load_adapter_state_dict, save_adapter

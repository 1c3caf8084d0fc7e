"""genlora_pl: fine-tune timm and transformers models with generative low-rank adapters.

The public API is imported lazily, so ``python -m genlora_pl --help`` answers before torch,
Lightning, timm and transformers are loaded. Names and modules that moved in 0.2 still answer, with
a deprecation line, until 0.3 (:mod:`genlora_pl.compat`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from genlora_pl import compat

__version__ = "0.2.1"

_EXPORTS = {
    # adapters and their files
    "AdapterConfig": "genlora_pl.adapters",
    "GenLoRAConfig": "genlora_pl.adapters",
    "LoRAConfig": "genlora_pl.adapters",
    "DoRAConfig": "genlora_pl.adapters",
    "register": "genlora_pl.adapters",
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
    "export_checkpoint": "genlora_pl.export",
    # what the adapters learned
    "parameter_report": "genlora_pl.spectra",
    "adapter_spectra": "genlora_pl.spectra",
    "adapter_diagnostics": "genlora_pl.spectra",
    "effective_rank": "genlora_pl.spectra",
    "stable_rank": "genlora_pl.spectra",
    "energy_rank": "genlora_pl.spectra",
    # Lightning
    "ClassificationModule": "genlora_pl.tasks",
    "CausalLMModule": "genlora_pl.tasks",
    "AdapterTask": "genlora_pl.tasks",
    "AdapterCallback": "genlora_pl.callbacks",
    "AdapterMonitor": "genlora_pl.callbacks",
    "FaultTolerance": "genlora_pl.callbacks",
    "PredictionWriter": "genlora_pl.callbacks",
}
__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    return compat.renamed(__name__, name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


compat.redirect_moved_modules()


if TYPE_CHECKING:
    from genlora_pl.adapters import AdapterConfig, DoRAConfig, GenLoRAConfig, LoRAConfig, register
    from genlora_pl.callbacks import AdapterCallback, AdapterMonitor, FaultTolerance, PredictionWriter
    from genlora_pl.export import export_checkpoint, export_peft
    from genlora_pl.injection import (
        adapter_layers,
        inject_adapters,
        merge_adapters,
        merge_and_unload,
        unmerge_adapters,
    )
    from genlora_pl.spectra import (
        adapter_diagnostics,
        adapter_spectra,
        effective_rank,
        energy_rank,
        parameter_report,
        stable_rank,
    )
    from genlora_pl.state import adapter_state_dict, load_adapter, load_adapter_state_dict, save_adapter
    from genlora_pl.tasks import AdapterTask, CausalLMModule, ClassificationModule

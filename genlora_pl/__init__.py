"""genlora_pl: fine-tune timm and transformers models with generative low-rank adapters.

The public API is imported lazily, so ``python -m genlora_pl --help`` answers before torch,
Lightning, timm and transformers are loaded. Modules that moved in 0.2 (``genlora_pl.module``,
``genlora_pl.callback``, ``genlora_pl.faults``, ``genlora_pl.checkpoint_export``) still import,
with a deprecation warning, until 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

_EXPORTS = {
    # adapters and their files
    "AdapterConfig": "genlora_pl.adapters",
    "GenLoRAConfig": "genlora_pl.adapters",
    "LoRAConfig": "genlora_pl.adapters",
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
    "GenLoRACallback": "genlora_pl.callbacks",
    "AdapterMonitor": "genlora_pl.callbacks",
    "FaultTolerance": "genlora_pl.callbacks",
    "PredictionWriter": "genlora_pl.callbacks",
}
# old name -> (module, new name): still answered, with a deprecation warning, until 0.3
_RENAMED = {"centre_drift": ("genlora_pl.spectra", "adapter_diagnostics")}
_MOVED_MODULES = {
    "genlora_pl.module": "genlora_pl.tasks.classification",
    "genlora_pl.callback": "genlora_pl.callbacks.genlora",
    "genlora_pl.faults": "genlora_pl.callbacks.faults",
    "genlora_pl.checkpoint_export": "genlora_pl.export.checkpoint",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    if name in _RENAMED:
        module, new = _RENAMED[name]
        warnings.warn(f"genlora_pl.{name} is now genlora_pl.{new}; the old name goes away in 0.3.", FutureWarning, 2)
        return getattr(importlib.import_module(module), new)
    raise AttributeError(f"module 'genlora_pl' has no attribute {name!r}")


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import genlora_pl.module`` gives ``genlora_pl.tasks.classification`` (and so on)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        new = _MOVED_MODULES[spec.name]
        warnings.warn(f"{spec.name} moved to {new}; the old path goes away in genlora_pl 0.3.", FutureWarning, 2)
        return importlib.import_module(new)

    def exec_module(self, module: Any) -> None:
        pass


if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
    sys.meta_path.append(_MovedModules())


if TYPE_CHECKING:
    from genlora_pl.adapters import AdapterConfig, GenLoRAConfig, LoRAConfig, register
    from genlora_pl.callbacks import AdapterMonitor, FaultTolerance, GenLoRACallback, PredictionWriter
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
    from genlora_pl.tasks import ClassificationModule

"""Every path kept only so that genlora_pl 0.1 code, configs and files keep working, in one room:
dropping 0.1 support at 0.3 is deleting this module and the one-line hooks that call it (each
says ``compat``). Files written by 0.1 keep loading after that only through a converter.

What is here:
- module paths and public names that moved in 0.2 (``genlora_pl.module``, ``centre_drift``, ...)
  and the names that became method-neutral (``GenLoRACallback`` is :class:`AdapterCallback`);
- adapter-callback settings that moved (``adapter.group_size`` -> ``adapter.options.group_size``,
  ``adapter.plots`` -> ``monitor.plots``), for Python calls and for the command line;
- checkpoints: callback states under their old names, and the optimizer state of a 0.1 checkpoint.

Reading a 0.1 checkpoint's optimizer: the optimizer held one group of every trained parameter and
GenLoRA kept 8 generator tensors per layer; 0.2 has named groups (``head``, ``adapter.<kind>``) and
stacks same-shaped layers' tensors in shape groups. The model's weights need nothing (state dicts
show every layer's tensors under its own name), but the optimizer state is stored by position: each
moment of a 0.1 parameter moves to the group, and the slice of the stack, that holds it now.
Checkpoints record ``format_version`` from 0.2 on; one without it is a 0.1 checkpoint.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

#: The version of the checkpoint layout written now (see :func:`migrate_checkpoint`).
FORMAT_VERSION = 2
DROPPED_IN = "0.3"

MOVED_MODULES = {
    "genlora_pl.module": "genlora_pl.tasks.classification",
    "genlora_pl.callback": "genlora_pl.callbacks.adapters",
    "genlora_pl.callbacks.genlora": "genlora_pl.callbacks.adapters",
    "genlora_pl.faults": "genlora_pl.callbacks.faults",
    "genlora_pl.checkpoint_export": "genlora_pl.export.checkpoint",
}
_CALLBACK = ("genlora_pl.callbacks.adapters", "AdapterCallback")
#: module -> {old name: (module, new name)}
RENAMED = {
    "genlora_pl": {"centre_drift": ("genlora_pl.spectra", "adapter_diagnostics"), "GenLoRACallback": _CALLBACK},
    "genlora_pl.callbacks": {"GenLoRACallback": _CALLBACK},
    "genlora_pl.callbacks.adapters": {"GenLoRACallback": _CALLBACK},
}
#: checkpoint["callbacks"] keys that were renamed
RENAMED_CALLBACK_STATES = {"GenLoRACallback": "AdapterCallback"}
#: adapter-callback settings that moved: old key -> where it lives now
MOVED_ADAPTER_KEYS = {
    "group_size": "adapter.options.group_size",
    "kernel": "adapter.options.kernel",
    "width0": "adapter.options.width0",
    "log_every_n_steps": "monitor.log_every_n_steps",
    "plots": "monitor.plots",
}


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is now {new}; the old name goes away in genlora_pl {DROPPED_IN}.", FutureWarning, 3)


def renamed(module: str, name: str) -> Any:
    """A module's ``__getattr__`` for names that moved: the new object, with one deprecation line."""
    moved = RENAMED.get(module, {}).get(name)
    if moved is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    _deprecated(f"{module}.{name}", f"{moved[0]}.{moved[1]}")
    return getattr(importlib.import_module(moved[0]), moved[1])


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import genlora_pl.module`` gives ``genlora_pl.tasks.classification`` (and so on)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: Any) -> Any:
        new = MOVED_MODULES[spec.name]
        _deprecated(spec.name, new)
        return importlib.import_module(new)

    def exec_module(self, module: Any) -> None:
        pass


def redirect_moved_modules() -> None:
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.append(_MovedModules())


# ----------------------------------------------------------------------------- settings
def moved_callback_arguments(options: dict[str, Any], **old: Any) -> dict[str, Any]:
    """The adapter callback's ``options`` with the values of its deprecated arguments folded in
    (``group_size``, ``kernel``, ``width0``); ``log_every_n_steps`` and ``plots`` belong to the monitor
    and are dropped with a line saying so."""
    given = {k: v for k, v in old.items() if v is not None}
    for key in given:
        new = MOVED_ADAPTER_KEYS[key]
        where = (
            "add AdapterMonitor(...) to the callbacks; this argument does nothing" if new.startswith("monitor") else ""
        )
        _deprecated(f"adapter.{key}", new + (f" ({where})" if where else ""))
    moved = {k: v for k, v in given.items() if MOVED_ADAPTER_KEYS[k].startswith("adapter.options")}
    return {**moved, **options}


def move_adapter_keys(config: Any) -> None:
    """On the command line: move deprecated ``adapter.<key>`` values to their sections, in place."""
    adapter = config.adapter
    for key, new in MOVED_ADAPTER_KEYS.items():
        value = adapter.get(key)
        if value is None:
            continue
        section, *rest = new.split(".")
        if section == "monitor":
            config.monitor[rest[0]] = value
        else:
            adapter.options = {**(adapter.options or {}), rest[-1]: value}
        adapter[key] = None
        sys.stderr.write(f"deprecated: adapter.{key} is now {new}; the old key goes away in genlora_pl {DROPPED_IN}.\n")


# ----------------------------------------------------------------------------- checkpoints
def migrate_checkpoint(checkpoint: dict[str, Any], module: Any) -> None:
    """Bring an older checkpoint to today's layout, in place, before anything is restored from it:
    callback states under their new names (the best metrics the 0.1 callback kept go to the
    monitor), and a 0.1 optimizer state regrouped for ``module``."""
    callbacks = checkpoint.get("callbacks") or {}
    for old, new in RENAMED_CALLBACK_STATES.items():
        if old in callbacks and new not in callbacks:
            state = callbacks.pop(old)
            if "best" in state:
                callbacks.setdefault("AdapterMonitor", {"best": state.pop("best")})
            callbacks[new] = state
    if checkpoint.get("format_version", 1) < 2:
        migrate_optimizer_state(checkpoint, module)


def legacy_parameter_order(module: nn.Module) -> list[tuple[nn.Parameter, int | None]]:
    """The trained parameters in the order 0.1 handed them to the optimizer (``module.parameters()``
    with grad), each as ``(today's parameter, slice of it or None)``."""
    from genlora_pl.adapters.genlora import GenLoRAGroup, GenLoRALayer  # torch: not at import

    order: list[tuple[nn.Parameter, int | None]] = []
    seen: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, GenLoRAGroup):
            continue  # its tensors are listed where 0.1 had them: in each layer
        if isinstance(sub, GenLoRALayer) and sub.group is not None:
            index = sub.__dict__["_index"]
            stacks = sub.group._parameters
            order += [(stacks[name], index) for name in sub.group.names if stacks[name].requires_grad]
        for param in sub._parameters.values():
            if param is not None and param.requires_grad and id(param) not in seen:
                seen.add(id(param))
                order.append((param, None))
    return order


def migrate_optimizer_state(checkpoint: dict[str, Any], module: Any) -> None:
    """Rewrite a 0.1 checkpoint's optimizer and LR-scheduler states, in place, for ``module``'s
    parameter groups (see the module docstring); a state that does not fit is left alone, and
    Lightning's own check then names the difference."""
    import torch

    states = checkpoint.get("optimizer_states") or []
    if len(states) != 1 or len(states[0].get("param_groups", [])) != 1:
        return
    old = states[0]
    old_group = old["param_groups"][0]
    order = legacy_parameter_order(module)
    if len(order) != len(old_group["params"]):
        return
    moments: dict[int, dict[int | None, dict[str, Any]]] = {}
    for position, (param, index) in zip(old_group["params"], order, strict=True):
        if position in old["state"]:
            moments.setdefault(id(param), {})[index] = old["state"][position]
    groups = module.parameter_groups()
    new_state: dict[int, dict[str, Any]] = {}
    new_groups = []
    position = 0
    for group in groups:
        positions = []
        for param in group["params"]:
            parts = moments.get(id(param))
            if parts:
                if None in parts:
                    new_state[position] = parts[None]
                else:  # a stack: one slice per layer of its shape group
                    first = parts[min(parts)]
                    new_state[position] = {
                        key: torch.stack([parts[i][key] for i in sorted(parts)])
                        if torch.is_tensor(value) and value.ndim
                        else value
                        for key, value in first.items()
                    }
            positions.append(position)
            position += 1
        new_groups.append(
            {**{k: v for k, v in old_group.items() if k != "params"}, "params": positions, "name": group["name"]}
        )
    checkpoint["optimizer_states"] = [{"state": new_state, "param_groups": new_groups}]
    for scheduler in checkpoint.get("lr_schedulers") or []:
        for key, value in list(scheduler.items()):
            if isinstance(value, list) and len(value) == 1:  # one entry per parameter group
                scheduler[key] = value * len(new_groups)

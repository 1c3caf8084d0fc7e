"""The registry of adapter methods: name -> (config class, layer class).

A method is one file: its config (a dataclass extending :class:`AdapterConfig`) and its layer
(extending :class:`AdapterLayer`), registered once at the bottom of that file with :func:`register`.
Everything that chooses a method by name (injection, adapter files, checkpoints, the CLI's
``adapter.method``, export) asks :func:`method`. A method defined outside the package is named by
the dotted path of the module that registers it (``my_pkg.my_method``), which is imported on demand.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from typing import Any

from genlora_pl.adapters.base import AdapterLayer
from genlora_pl.adapters.config import AdapterConfig


@dataclass(frozen=True)
class Method:
    """An adapter method: its config class and the layer class that wraps a base layer."""

    config: type[AdapterConfig]
    layer: type[AdapterLayer]


METHODS: dict[str, Method] = {}


def register(config: type[AdapterConfig], layer: type[AdapterLayer]) -> None:
    """Make a method available by ``config.name`` everywhere (injection, files, CLI, export)."""
    if not config.name:
        raise ValueError(f"{config.__name__} has no name; set the class variable name = '<method>'.")
    known = METHODS.get(config.name)
    if known is not None and known != Method(config, layer):
        raise ValueError(f"adapter method {config.name!r} is already registered by {known.config.__name__}.")
    METHODS[config.name] = Method(config, layer)


def _import_method(path: str) -> Method | None:
    """The method a dotted path names: the one its module registers (the module's last part, or the
    only one it registers), or an ``AdapterConfig`` subclass at the path. None if there is none."""
    before = set(METHODS)
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(path)
    except ImportError:
        try:
            found = getattr(importlib.import_module(module_name), attr, None)
        except ImportError:
            return None
        if isinstance(found, type) and issubclass(found, AdapterConfig) and found.name in METHODS:
            return METHODS[found.name]
        return None
    new = [n for n in METHODS if n not in before]
    name = attr if attr in METHODS else new[0] if len(new) == 1 else None
    if name is None:  # imported before: find what the module itself defines
        defined = [m for m in METHODS.values() if m.config.__module__ == module.__name__]
        return defined[0] if len(defined) == 1 else None
    return METHODS[name]


def method(name: str) -> Method:
    """The method registered under ``name`` or registered by the module ``name`` names (a dotted path,
    imported here), or a ValueError listing the valid names."""
    found = METHODS.get(name) if isinstance(name, str) else None
    if found is None and isinstance(name, str) and "." in name:
        found = _import_method(name)
    if found is None:
        raise ValueError(
            f"adapter={name!r} is unknown; choose one of {', '.join(sorted(METHODS))}, or the dotted path of "
            "a module that registers one (my_pkg.my_method)."
        )
    return found


def config_class(name: str) -> type[AdapterConfig]:
    return method(name).config


def adapter_class(name: str) -> type[AdapterLayer]:
    """The layer class registered under ``name``, or a ValueError listing the valid names."""
    return method(name).layer


def config_from_dict(data: dict[str, Any]) -> AdapterConfig:
    """Rebuild a config written by :meth:`AdapterConfig.to_dict`; unknown keys are an error, and a
    setting the file predates takes the value it was made with (``file_defaults``)."""
    data = dict(data)
    cls = config_class(data.pop("adapter", None))
    data = {**cls.file_defaults, **data}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.name} config keys {unknown}; valid keys are {sorted(known)}.")
    return cls(**data)

"""Adapter state dicts and adapter folders.

An adapter folder holds ``adapter_model.safetensors`` (adapter parameters, ``gate`` and
``temperature`` buffers, ``modules_to_save`` weights; safetensors cannot carry code, so loading one
is safe) and ``genlora_config.json`` (the adapter config, the adapted layers with their shapes, and
the SHA-256 of the weights file so a corrupted file is caught). The folder is built beside its
target and swapped in (``files.write_folder``), so a crash mid-write leaves the previous good
adapter intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genlora_pl.adapters import AdapterConfig, config_differences, config_from_dict
from genlora_pl.adapters.base import check_supported, layer_dims
from genlora_pl.files import atomic_write_text, load_safetensors, recover_folder, save_safetensors, sha256, write_folder
from genlora_pl.injection import (
    CONFIG_ATTR,
    adapter_layers,
    inject_adapters,
    model_config,
    modules_to_save,
    selected_layers,
    unload,
)

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "genlora_config.json"
FORMAT_VERSION = 1


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything an adapter run trained, by full module path: adapter parameters and buffers of
    every adapted layer (under the layer's name, also where a method keeps them shared, as GenLoRA's
    shape groups do) plus the parameters of ``modules_to_save``. Tensors are detached."""
    prefixes = tuple(f"{name}." for name in adapter_layers(model))
    state = {
        key: value
        for key, value in model.state_dict().items()
        if key.startswith(prefixes) and ".base_layer." not in key[len(_owner(key, prefixes)) - 1 :]
    }
    return {**state, **saved_modules_state(model)}


def _owner(key: str, prefixes: tuple[str, ...]) -> str:
    """The longest adapter-layer prefix of ``key``."""
    return max((p for p in prefixes if key.startswith(p)), key=len)


def saved_modules_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state of the ``modules_to_save`` (a trained head, say), by full module path."""
    return {
        f"{name}.{key}": value
        for name, module in modules_to_save(model, model_config(model)).items()
        for key, value in module.state_dict().items()
    }


def load_adapter_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
    """Copy ``state`` into the model's adapters, all or nothing.

    Raises:
        ValueError: a key is missing or unexpected, or a shape differs; the message names them.
            Nothing is copied unless every key and shape matches.
    """
    own = adapter_state_dict(model)
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) such as {missing[:3]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) such as {unexpected[:3]}")
        raise ValueError(
            f"{source} does not fit this model's adapters: {' and '.join(parts)}; "
            "it was saved for another backbone or another target set."
        )
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise ValueError(
                f"{source} does not fit this model's adapters: {key} has shape {tuple(state[key].shape)} "
                f"there but {tuple(value.shape)} here; it was saved with another rank, group size or backbone."
            )
    # through load_state_dict, so tensors a method keeps shared (GenLoRA's groups) are filled too
    result = model.load_state_dict({k: state[k] for k in own}, strict=False)
    if result.unexpected_keys:  # pragma: no cover - the keys were checked above
        raise ValueError(f"{source} does not fit this model's adapters: unexpected {result.unexpected_keys[:3]}.")


def _describe(model: nn.Module) -> dict[str, Any]:
    layers = adapter_layers(model)
    return {
        "format_version": FORMAT_VERSION,
        "backbone": type(model).__name__,
        "layers": {n: [layer.out_features, layer.in_features] for n, layer in layers.items()},
    }


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write the model's adapter to ``directory`` (created, or replaced whole if it is an adapter
    folder already); returns the folder."""
    config = model_config(model)
    state = adapter_state_dict(model)

    def fill(folder: Path) -> None:
        weights = folder / WEIGHTS_NAME
        save_safetensors(state, weights, metadata={"format": "pt", "adapter": config.name})
        meta = {**_describe(model), "config": config.to_dict(), "weights_sha256": sha256(weights)}
        atomic_write_text(folder / CONFIG_NAME, json.dumps(meta, indent=2) + "\n")

    return write_folder(directory, fill, owned={WEIGHTS_NAME, CONFIG_NAME})


def read_adapter_config(directory: str | os.PathLike) -> tuple[AdapterConfig, dict[str, Any]]:
    """The config and the metadata of an adapter folder, checked for readability."""
    recover_folder(directory)
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; an adapter folder holds {CONFIG_NAME} and {WEIGHTS_NAME}.")
    try:
        meta = json.loads(path.read_text())
        config = config_from_dict(meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read {path}: it is not a genlora_pl adapter config ({err}).") from None
    return config, meta


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> list[str]:
    """Load an adapter folder into ``model``, injecting its config first if the model has none.

    Raises:
        ValueError: the folder is damaged, or was saved for another backbone, target set or rank
            (the message says what differs). The model's adapters are unchanged then.
    """
    directory = Path(directory)
    config, meta = read_adapter_config(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist; the adapter folder is incomplete.")
    if meta.get("weights_sha256") and sha256(weights) != meta["weights_sha256"]:
        raise ValueError(
            f"{weights} does not match the checksum in {CONFIG_NAME}: the file is corrupted or from another save."
        )
    current = getattr(model, CONFIG_ATTR, None)
    if current is not None and current != config:
        diff = config_differences(config, current)
        raise ValueError(f"{directory} was saved with other adapter settings ({'; '.join(diff)}).")
    if meta.get("backbone") and meta["backbone"] != type(model).__name__:
        raise ValueError(f"{directory} was saved for a {meta['backbone']}, not a {type(model).__name__}.")
    state = load_safetensors(weights)
    if current is not None:
        load_adapter_state_dict(model, state, source=str(weights))
        return list(adapter_layers(model))
    expected = meta.get("layers")
    modules = dict(model.named_modules())
    here = {n: list(layer_dims(modules[n], check_supported(n, modules[n]))) for n in selected_layers(model, config)}
    if expected is not None and expected != here:
        raise ValueError(
            f"{directory} was saved for another backbone or target set: {_layer_difference(expected, here)}."
        )
    names = inject_adapters(model, config)
    try:
        load_adapter_state_dict(model, state, source=str(weights))
    except BaseException:
        unload(model)  # leave the model as it came
        raise
    return names


def _layer_difference(there: dict[str, list[int]], here: dict[str, list[int]]) -> str:
    """What differs between the layers an adapter was saved for and the model's matching layers."""

    def names(items: list[str]) -> str:
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    only_there = [n for n in there if n not in here]
    only_here = [n for n in here if n not in there]
    reshaped = [n for n in there if n in here and list(there[n]) != list(here[n])]
    parts = []
    if only_there:
        parts.append(f"it adapts {names(only_there)}, which this model does not have")
    if only_here:
        parts.append(f"this model's {names(only_here)} match the targets but are not in it")
    if reshaped:
        n = reshaped[0]
        parts.append(f"{n} is {tuple(there[n])} there, {tuple(here[n])} here")
    return "; ".join(parts)

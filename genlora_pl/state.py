"""Adapter state dicts and adapter folders.

An adapter folder holds ``adapter_model.safetensors`` (adapter parameters, ``gate`` and
``temperature`` buffers, ``modules_to_save`` weights; safetensors cannot carry code, so loading one
is safe) and ``genlora_config.json`` (the adapter config, the adapted layers with their shapes, and
the SHA-256 of the weights file so a corrupted file is caught). A folder is written whole into a
temporary sibling and renamed into place (:func:`write_folder`), and every single file to a temporary
name renamed over the old one (:func:`atomic_write`), so a crash mid-write leaves the previous good
adapter intact.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from genlora_pl.adapters import AdapterConfig, config_from_dict
from genlora_pl.adapters.base import check_supported, layer_dims
from genlora_pl.injection import (
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
    every adapted layer plus the parameters of ``modules_to_save``. Tensors are detached views."""
    state: dict[str, torch.Tensor] = {}
    for name, layer in adapter_layers(model).items():
        for key, value in layer.state_dict(keep_vars=False).items():
            if not key.startswith("base_layer."):
                state[f"{name}.{key}"] = value
    return {**state, **saved_modules_state(model)}


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
    with torch.no_grad():
        for key, value in own.items():
            value.copy_(state[key].to(dtype=value.dtype, device=value.device))


def _remove_stale(folder: Path, prefix: str) -> None:
    """Temporary files or folders a killed writer left behind (one writer per path is assumed)."""
    for stale in folder.glob(f"{glob.escape(prefix)}*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``; a failure leaves ``path`` untouched.

    The temporary file lies beside ``path`` (same file system, so the rename is atomic) and is
    fsynced before the rename, so a crash or power loss leaves either the old or the new file.
    """
    path = Path(path)
    _remove_stale(path.parent, f".{path.name}.")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def recover_folder(target: str | os.PathLike) -> None:
    """Put back a folder that a crash in the middle of :func:`write_folder`'s two renames left as
    ``.<name>.old``; drop a stale ``.old`` when the new folder made it."""
    target = Path(target)
    old = _old(target)
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, target)


def write_folder(target: str | os.PathLike, fill: Callable[[Path], None], owned: set[str] | None = None) -> Path:
    """Build a folder with ``fill(staging)`` in a temporary sibling and move it to ``target``.

    An existing ``target`` is replaced only after the new folder is complete: it is renamed to
    ``.<name>.old``, the new one renamed in, then the old one removed; a crash between the two
    renames is undone by :func:`recover_folder` (called here and by the loaders). With ``owned``,
    an existing ``target`` that holds other files is refused rather than deleted.
    """
    target = Path(target)
    recover_folder(target)
    _remove_stale(target.parent, f".{target.name}.")
    if owned is not None and target.is_dir():
        foreign = sorted(p.name for p in target.iterdir() if p.name not in owned)
        if foreign:
            raise FileExistsError(
                f"{target} holds files this save would delete ({', '.join(foreign[:3])}); "
                "choose an empty folder or one written by the same save."
            )
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is a file; give a folder path.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(staging, 0o777 & ~umask)
        fill(staging)
        if target.exists():
            os.replace(target, _old(target))
            os.replace(staging, target)
            shutil.rmtree(_old(target), ignore_errors=True)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a damaged file is a ValueError that names it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(
            f"cannot read adapter weights {path}: the file is truncated or not safetensors ({err})."
        ) from None


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
        meta = {**_describe(model), "config": config.to_dict(), "weights_sha256": _sha256(weights)}
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
    if meta.get("weights_sha256") and _sha256(weights) != meta["weights_sha256"]:
        raise ValueError(
            f"{weights} does not match the checksum in {CONFIG_NAME}: the file is corrupted or from another save."
        )
    current = getattr(model, "genlora_pl_config", None)
    if current is not None and current != config:
        mine = current.to_dict()
        diff = [f"{k}={v!r} there, {mine.get(k)!r} here" for k, v in config.to_dict().items() if mine.get(k) != v]
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

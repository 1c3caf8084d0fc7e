"""Putting adapters into a model and taking them out again.

Plain functions over ``nn.Module`` so they work on any timm or transformers model; the Lightning
callback composes them. Matching follows PEFT: a list entry matches a module name exactly or as a
``.suffix``, a string is a regex that must match the whole name, ``"all-linear"`` takes every
linear map (``nn.Linear``, transformers ``Conv1D``, 1x1 ``nn.Conv2d``) outside the classifier head.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator

from torch import nn

from genlora_pl.adapters import AdapterConfig, AdapterLayer, adapter_class
from genlora_pl.adapters.base import check_supported, layer_dims, layer_kind

# Attribute under which the model remembers the config it was injected with.
CONFIG_ATTR = "genlora_pl_config"
_HEAD_NAMES = ("head", "fc", "classifier", "score", "lm_head", "head.fc")


def matches(name: str, patterns: list[str] | str | None) -> bool:
    """PEFT's rule: list -> exact name or ``.suffix``; string -> full regex match."""
    if patterns is None:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, name) is not None
    return any(name == p or name.endswith("." + p) for p in patterns)


def head_names(model: nn.Module) -> list[str]:
    """Names of the classifier / output head, which ``all-linear`` leaves alone.

    timm models name it in ``pretrained_cfg['classifier']``; transformers models expose output
    embeddings and name sequence/image classifiers ``classifier`` or ``score``.
    """
    modules = dict(model.named_modules())
    found: list[str] = []
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("classifier"):
        classifier = cfg["classifier"]
        found += [classifier] if isinstance(classifier, str) else list(classifier)
    get_output = getattr(model, "get_output_embeddings", None)
    if callable(get_output):
        try:
            out = get_output()
        except (AttributeError, NotImplementedError):
            out = None
        found += [n for n, m in modules.items() if out is not None and m is out]
    found += [n for n in _HEAD_NAMES if n in modules]
    return sorted({n for n in found if n in modules})


def _under(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _is_pointwise(module: nn.Module) -> bool:
    kind = layer_kind(module)
    if kind == "conv2d":
        return all(k == 1 for k in module.kernel_size)
    return kind is not None


def candidate_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every ``(name, module)`` an adapter could wrap, skipping adapters' own insides."""
    adapters = list(adapter_layers(model))
    for name, module in model.named_modules():
        if name and not _under(name, adapters) and layer_kind(module) is not None:
            yield name, module


def adapter_layers(model: nn.Module) -> dict[str, AdapterLayer]:
    """The adapters in ``model`` by the name of the layer they wrap."""
    return {n: m for n, m in model.named_modules() if isinstance(m, AdapterLayer)}


def selected_layers(model: nn.Module, config: AdapterConfig) -> list[str]:
    adapters = adapter_layers(model)
    heads = head_names(model)
    chosen = []
    for name, module in model.named_modules():
        if not name or (_under(name, list(adapters)) and name not in adapters):
            continue  # the root, or the inside of an adapter
        if matches(name, config.exclude_modules):
            continue
        if config.target_modules == "all-linear":
            base = adapters[name].base_layer if name in adapters else module
            take = _is_pointwise(base) and not _under(name, heads)
        else:
            take = matches(name, config.target_modules)
        if take:
            chosen.append(name)
    return chosen


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def inject_adapters(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Wrap every targeted layer of ``model`` with the adapter ``config`` names, in place.

    Everything except adapter parameters and ``modules_to_save`` is frozen. Injecting the same
    config again is a no-op that returns the same names; a different config on an adapted model
    is an error (merge and unload first).

    Returns:
        The names of the adapted layers, in module order.

    Raises:
        ValueError: nothing matched (the message lists the layers that could be targeted), or the
            model already carries a different adapter config.
        TypeError: a targeted module is not a layer an adapter can wrap.
    """
    previous = getattr(model, CONFIG_ATTR, None)
    if previous is not None and previous != config:
        raise ValueError(
            f"the model already has {previous.name} adapters with {previous}; "
            "call merge_and_unload() before injecting a different config."
        )
    names = selected_layers(model, config)
    if not names:
        raise ValueError(_nothing_matched(model, config))
    modules_to_save(model, config)  # validate before touching the model
    layer_cls = adapter_class(config.name)
    modules = dict(model.named_modules())
    new = {n: modules[n] for n in names if not isinstance(modules[n], AdapterLayer)}
    for name, module in new.items():
        check_supported(name, module)  # all checked before any is wrapped: no half-injected model
    _say_what_is_surprising(model, config, new)
    for name, module in new.items():
        _set_module(model, name, layer_cls(module, config, name))
    if new:
        layer_cls.attach(model, adapter_layers(model))
    setattr(model, CONFIG_ATTR, config)
    _set_trainable(model, config)
    return names


def _say_what_is_surprising(model: nn.Module, config: AdapterConfig, new: dict[str, nn.Module]) -> None:
    """One warning line each for what is legal but rarely meant: ``all-linear`` on a model whose
    output layer has no name we know (it is adapted with the rest), and a rank above what a layer's
    update can have (the extra basis vectors add parameters, not rank)."""
    last = ([n for n, _ in candidate_layers(model)] or [None])[-1]
    if config.target_modules == "all-linear" and last in new and not head_names(model):
        warnings.warn(
            f"all-linear found no output head in {type(model).__name__} (none is named {', '.join(_HEAD_NAMES[:5])}), "
            f"so its last linear layer {last!r} is adapted too; put it in exclude_modules (or modules_to_save) "
            "to keep it as it is.",
            UserWarning,
            stacklevel=3,
        )
    small = {}
    for name, module in new.items():
        kind = layer_kind(module)
        limit = min(layer_dims(module, kind)) if kind else config.r
        if config.r > limit:
            small[name] = limit
    if small:
        name, limit = next(iter(small.items()))
        more = f" (and {len(small) - 1} more layers)" if len(small) > 1 else ""
        warnings.warn(
            f"r={config.r} is above the rank {limit} that layer {name!r}{more} can take (min of its input and "
            f"output sizes): its update cannot have a higher rank, the extra basis vectors add parameters only.",
            UserWarning,
            stacklevel=3,
        )


def _nothing_matched(model: nn.Module, config: AdapterConfig) -> str:
    layers = [n for n, _ in candidate_layers(model)]
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in layers})
    example = ", ".join(layers[:6]) + (", ..." if len(layers) > 6 else "")
    return (
        f"target_modules={config.target_modules!r} matched no layer of {type(model).__name__}; "
        f"its adaptable layers are named {suffixes} (e.g. {example})."
        if layers
        else f"{type(model).__name__} has no layer an adapter can wrap (nn.Linear, Conv1D, nn.Conv2d)."
    )


def modules_to_save(model: nn.Module, config: AdapterConfig) -> dict[str, nn.Module]:
    """The modules trained in full beside the adapters, by name."""
    if not config.modules_to_save:
        return {}
    found = {n: m for n, m in model.named_modules() if n and matches(n, config.modules_to_save)}
    missing = [p for p in config.modules_to_save if not any(matches(n, [p]) for n in found)]
    if missing:
        raise ValueError(
            f"modules_to_save entries {missing} match no module of {type(model).__name__}; "
            f"its classifier head is {head_names(model) or 'not recognised'}."
        )
    # Keep only the outermost of nested matches, so each parameter is listed once.
    return {n: m for n, m in found.items() if not _under(n, [o for o in found if o != n])}


def _set_trainable(model: nn.Module, config: AdapterConfig) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in adapter_layers(model).values():
        for p in layer.adapter_parameters().values():
            p.requires_grad_(True)
    for module in modules_to_save(model, config).values():
        for p in module.parameters():
            p.requires_grad_(True)


def merge_adapters(model: nn.Module, safe: bool = True) -> None:
    """Merge every adapter into its base weight; forwards then cost what the base model costs.

    With ``safe`` every merged weight is checked before any is written, so a non-finite adapter
    leaves the whole model untouched.
    """
    layers = [m for m in adapter_layers(model).values() if not m.merged]
    if safe:
        for layer in layers:
            bad = ~layer.delta_weight().isfinite()
            if bad.any():
                raise ValueError(f"refusing to merge adapter {layer.path!r}: its update contains NaN or Inf.")
    for layer in layers:
        layer.merge(safe=safe)


def unmerge_adapters(model: nn.Module) -> None:
    """Undo :func:`merge_adapters`."""
    for layer in adapter_layers(model).values():
        if layer.merged:
            layer.unmerge()


def merge_and_unload(model: nn.Module, safe: bool = True) -> nn.Module:
    """Merge every adapter and put the plain base layers back; returns the model.

    The result has no adapter modules left: it is the backbone with updated weights, ready for
    ``timm`` / ``save_pretrained`` or any code that knows nothing about genlora_pl.
    """
    merge_adapters(model, safe=safe)
    return _remove_adapters(model)


def unload(model: nn.Module) -> nn.Module:
    """Put the original base layers back, dropping the adapters' updates (merged ones included)."""
    unmerge_adapters(model)
    return _remove_adapters(model)


def _remove_adapters(model: nn.Module) -> nn.Module:
    for cls in {type(layer) for layer in adapter_layers(model).values()}:
        cls.detach(model)
    for name, layer in adapter_layers(model).items():
        _set_module(model, name, layer.base_layer)
    if hasattr(model, CONFIG_ATTR):
        delattr(model, CONFIG_ATTR)
    return model


def model_config(model: nn.Module) -> AdapterConfig:
    """The adapter config ``model`` was injected with, or a ValueError if it has none."""
    config = getattr(model, CONFIG_ATTR, None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no adapters; call inject_adapters() first.")
    return config

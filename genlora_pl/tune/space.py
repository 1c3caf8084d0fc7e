"""The search space of ``tune``: config keys and the Optuna distributions their values are drawn from.

A dimension is written ``KEY=DISTRIBUTION``, ``KEY`` a dotted config key as ``fit`` takes it on the
command line (``model.adapter_lr.genlora``, ``adapter.r``, ``adapter.options.group_size``,
``model.optimizer.init_args.lr``, ``model.lr_scheduler.init_args.warmup_fraction``):

    loguniform(1e-3, 1e-1)   uniform(0.0, 0.2)   int(8, 64)   logint(8, 128)   choice(8, 16, 32)

Every key must name a setting of the resolved config (or a method option / a rate of the adapter_lr
table that the method reads), so a typo is refused before any trial runs instead of sweeping nothing.
With no space given, :func:`default_space` sweeps the rate the chosen method (and GenLoRA reading)
trains at, over :data:`RATE_RANGES`: the span of the picks of our own validation sweeps.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

from genlora_pl.adapters.registry import config_class

KINDS = ("loguniform", "uniform", "int", "logint", "choice")

#: Where each adapter rate was picked in benchmarks/quality.yaml's validation sweeps (12 tasks x methods),
#: widened by about 3x on each side: the default range of ``tune`` for that rate table entry.
#: bumps (``genlora``): 5e-3 (ViT on CIFAR) to 2e-2 (text); signed: 3e-3 (arithmetic) to 2e-2 (BBC);
#: mixed: 1e-2; LoRA and DoRA: 1e-3 (SmolLM2 sums) to 1e-2 (LoRA r=1-2).
RATE_RANGES: dict[str, tuple[float, float]] = {
    "genlora": (2e-3, 6e-2),
    "genlora_bumps": (2e-3, 6e-2),
    "genlora_signed": (1e-3, 6e-2),
    "genlora_mixed": (3e-3, 3e-2),
    "lora": (3e-4, 3e-2),
    "dora": (3e-4, 3e-2),
}
#: The optimizer's own rate where no adapter trains: a full fine-tune (1e-4 MiniLM, 1e-3 EfficientNet,
#: 3e-4 SmolLM2 in our sweeps) and a head-only probe.
FULL_RANGE = (1e-5, 3e-3)
HEAD_RANGE = (1e-3, 1e-1)
#: The optimizer's rate in a config (the head's, or everything's in a full fine-tune).
OPTIMIZER_LR = "model.init_args.optimizer.init_args.lr"


@dataclass(frozen=True)
class Dimension:
    """One swept setting: its path in the resolved config and what its values are drawn from."""

    key: str
    spec: str
    distribution: Any  # an optuna BaseDistribution

    @property
    def name(self) -> str:
        """The parameter's name in the study and its tables: the key without ``init_args``."""
        return self.key.replace(".init_args.", ".")


def lookup(config: dict[str, Any], key: str) -> tuple[bool, Any]:
    """``(found, value)`` of a dotted ``key`` in a nested mapping."""
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def assign(config: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted ``key`` in a nested mapping, making mappings for missing or null parents."""
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def canonical(key: str, config: dict[str, Any]) -> str:
    """``model.adapter_lr.x`` as the resolved config holds it: ``model.init_args.adapter_lr.x`` where
    the section is a class with ``init_args`` (``model``, ``data``; nested ones such as the optimizer
    must be written out: ``model.optimizer.init_args.lr``)."""
    parts = key.split(".")
    section = config.get(parts[0])
    if isinstance(section, dict) and "init_args" in section and len(parts) > 1 and parts[1] != "init_args":
        parts.insert(1, "init_args")
    if len(parts) > 3 and parts[1] == "init_args":
        inner = lookup(config, ".".join(parts[:3]))[1]
        if isinstance(inner, dict) and "init_args" in inner and parts[3] not in ("init_args", "class_path"):
            parts.insert(3, "init_args")
    return ".".join(parts)


def value_of(item: Any) -> Any:
    """A YAML item as a number where it reads as one: YAML 1.1 leaves ``1e-3`` (no dot) a string."""
    if isinstance(item, str):
        for kind in (int, float):
            try:
                return kind(item)
            except ValueError:
                pass
    return item


def parse_distribution(key: str, text: str) -> Any:
    """The Optuna distribution of ``KIND(args)``; one sentence for anything else."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    found = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", text)
    valid = "give loguniform(low, high), uniform(low, high), int(low, high), logint(low, high) or choice(a, b, ...)"
    if found is None or found.group(1) not in KINDS:
        raise ValueError(f"the space of {key} is {text!r}; {valid}.")
    kind, body = found.group(1), found.group(2)
    try:
        values = [value_of(v) for v in yaml.safe_load(f"[{body}]") or []]
    except yaml.YAMLError:
        raise ValueError(f"the space of {key} is {text!r}: its values do not parse; {valid}.") from None
    if kind == "choice":
        if not values:
            raise ValueError(f"the space of {key} is {text!r}, an empty choice; give at least one value.")
        if len({yaml.safe_dump(v) for v in values}) < len(values):
            raise ValueError(f"the space of {key} is {text!r}, which repeats a value; give each value once.")
        return CategoricalDistribution(values)
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(values) != 2 or len(numbers) != 2 or not all(math.isfinite(v) for v in numbers):
        raise ValueError(f"the space of {key} is {text!r}; {kind} takes two finite numbers, low and high.")
    low, high = numbers
    if low >= high:
        what = "an empty range" if low == high else "an inverted range"
        raise ValueError(
            f"the space of {key} is {text!r}, {what}; give low < high (for one value, set the key instead)."
        )
    if kind in ("loguniform", "logint") and low <= 0:
        raise ValueError(f"the space of {key} is {text!r}: a log range needs low > 0.")
    if kind in ("int", "logint"):
        if not all(isinstance(v, int) for v in numbers):
            raise ValueError(f"the space of {key} is {text!r}; {kind} takes two integers.")
        return IntDistribution(low, high, log=kind == "logint")
    return FloatDistribution(float(low), float(high), log=kind == "loguniform")


def parse_space(entries: list[str]) -> list[tuple[str, str]]:
    """``(key, spec)`` pairs from ``KEY=SPEC`` strings or YAML files mapping keys to specs."""
    from pathlib import Path

    pairs: list[tuple[str, str]] = []
    for entry in entries:
        if "=" in entry:
            key, _, spec = entry.partition("=")
            pairs.append((key.strip(), spec.strip()))
            continue
        path = Path(entry)
        if not path.is_file():
            raise ValueError(f"--space {entry!r} is neither KEY=DISTRIBUTION nor a YAML file of them.")
        content = yaml.safe_load(path.read_text())
        if not isinstance(content, dict) or not content:
            raise ValueError(f"the space file {entry} holds no mapping of config keys to distributions.")
        pairs += [(str(k), str(v)) for k, v in content.items()]
    keys = [k for k, _ in pairs]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"the space gives {repeated[0]} more than once; give each key once.")
    return pairs


def open_keys(config: dict[str, Any], key: str) -> tuple[str, ...] | None:
    """The keys a free-form mapping of the config may take beyond those it holds: a method's options
    (``adapter.options``) and the rates of ``adapter_lr``; None where the config's own keys are all."""
    method = (config.get("adapter") or {}).get("method")
    parent = key.rpartition(".")[0]
    if parent == "adapter.options" and method not in (None, "none"):
        return tuple(config_class(method).options())
    if parent.endswith(".adapter_lr"):
        return tuple(RATE_RANGES)
    return None


def check_key(key: str, config: dict[str, Any]) -> None:
    """Refuse a key the resolved config does not hold (nor its method's options or rate table)."""
    found, value = lookup(config, key)
    if found:
        if isinstance(value, dict):
            raise ValueError(f"the space key {key} is a section, not a setting; sweep one of its keys: "
                             f"{', '.join(sorted(value))}.")  # fmt: skip
        return
    allowed = open_keys(config, key)
    leaf = key.rpartition(".")[2]
    if allowed is not None and leaf in allowed:
        return
    parent = key.rpartition(".")[0]
    held = lookup(config, parent)[1]
    holds = set(held) if isinstance(held, dict) else set()
    choices = sorted(holds | set(allowed or ()))
    if choices:
        raise ValueError(f"the space key {key} is not a setting of this config; under {parent} valid keys are "
                         f"{', '.join(choices)}.")  # fmt: skip
    parts = key.split(".")
    for depth in range(len(parts) - 1, 0, -1):  # the deepest part of the key that the config holds
        found, value = lookup(config, ".".join(parts[:depth]))
        if found:
            if value is None:
                raise ValueError(f"the space key {key} is not a setting of this config: {'.'.join(parts[:depth])} "
                                 "is null there; give it in the config or on the command line first.")  # fmt: skip
            break
    raise ValueError(f"the space key {key} is not a setting of this config (see `python -m genlora_pl fit "
                     "--config FILE --print_config` for its keys).")  # fmt: skip


def build_space(pairs: list[tuple[str, str]], config: dict[str, Any]) -> list[Dimension]:
    """Check each ``(key, spec)`` against the resolved config and make its dimension."""
    dims = []
    for given, spec in pairs:
        key = canonical(given, config)
        check_key(key, config)
        distribution = parse_distribution(given, spec)
        current = lookup(config, key)[1]
        integer = isinstance(current, int) and not isinstance(current, bool)
        if integer and type(distribution).__name__ == "FloatDistribution":
            raise ValueError(f"the space of {given} is {spec!r}, but {given} holds an integer ({current}); give "
                             "int(low, high), logint(low, high) or choice(...).")  # fmt: skip
        dims.append(Dimension(key, spec, distribution))
    return dims


def rate_key(config: dict[str, Any]) -> tuple[str, str]:
    """``(config key, range name)`` of the rate the chosen method trains its adapters at: an entry of
    the ``adapter_lr`` table (the reading's own for GenLoRA), ``adapter_lr`` itself when it is one
    number, or the optimizer's rate without adapters (a full fine-tune, a head-only probe)."""
    adapter = config.get("adapter") or {}
    method = adapter.get("method") or "none"
    model = config.get("model", {}).get("init_args", config.get("model", {}))
    head_only = bool(model.get("head_only"))
    if method == "none" or head_only:
        return OPTIMIZER_LR, "head" if head_only else "full"
    options = adapter.get("options") or {}
    keys = config_class(method)(r=adapter.get("r") or 8, **options).rate_keys()
    table = model.get("adapter_lr")
    base = "model.init_args.adapter_lr"
    if isinstance(table, dict):
        present = next((k for k in keys if k in table), keys[0])
        return f"{base}.{present}", present
    return base, keys[0]


def default_space(config: dict[str, Any]) -> tuple[list[Dimension], dict[str, Any]]:
    """The chosen method's rate over its range, and the config's own value of it (the first trial,
    so the study shows where the config as it is stands)."""
    from optuna.distributions import FloatDistribution

    key, name = rate_key(config)
    low, high = HEAD_RANGE if name == "head" else FULL_RANGE if name == "full" else RATE_RANGES.get(name, (1e-4, 1e-1))
    spec = f"loguniform({low:g}, {high:g})"
    dim = Dimension(key, spec, FloatDistribution(low, high, log=True))
    current = lookup(config, key)[1]
    start = {dim.name: float(current)} if isinstance(current, (int, float)) and low <= current <= high else {}
    return [dim], start

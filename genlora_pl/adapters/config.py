"""The settings every adapter method shares.

A method subclasses :class:`AdapterConfig` with its own fields (next to its layer, in one file) and
registers both (:mod:`genlora_pl.adapters.registry`). Every config validates itself in
``__post_init__`` and names the wrong value, so a bad YAML or a bad Python call fails before any
model is touched. The fields follow
PEFT's ``LoraConfig`` where the meaning is the same (``r``, ``target_modules``, ``exclude_modules``,
``modules_to_save``), so users can move between the two without relearning names.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar


def _check_patterns(name: str, value: Any, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, str):
        if not value:
            raise ValueError(f"{name}='' is not valid; give a regex, a list of module names or 'all-linear'.")
        try:
            re.compile(value)
        except re.error as err:
            raise ValueError(
                f"{name}={value!r} is not a valid regular expression ({err}); give a regex, or a list of module names."
            ) from None
        return
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) and v for v in value):
        if not value and name == "target_modules":
            raise ValueError("target_modules=[] selects nothing; give module names, a regex or 'all-linear'.")
        return
    raise ValueError(
        f"{name}={value!r} is not valid; give a list of module names, a regex string"
        + (" or 'all-linear'." if name == "target_modules" else ".")
    )


@dataclass
class AdapterConfig:
    """Settings shared by every adapter method.

    Args:
        r: rank of the update ``dW = s * B @ A`` (number of basis vectors).
        alpha: scale numerator; ``s = alpha / r`` (``alpha / sqrt(r)`` with ``rslora``).
            ``None`` means ``2 * r``, the setting of the method's first measurements.
        dropout: dropout probability on the adapter's input, in [0, 1).
        rslora: rank-stabilised scaling ``alpha / sqrt(r)``.
        target_modules: which layers to adapt. A list matches a module name exactly or as a
            ``.suffix`` (PEFT's rule); a string is a regex that must match the full name;
            ``"all-linear"`` takes every ``nn.Linear``, transformers ``Conv1D`` and 1x1
            ``nn.Conv2d`` except the classifier head.
        exclude_modules: layers never adapted, same matching rules as ``target_modules``.
        modules_to_save: modules trained in full and saved with the adapter (a new classifier
            head, say); matched like a ``target_modules`` list.
        seed: seed of the adapter initialisation. Each layer draws from its own generator seeded
            with ``seed`` and its name, so results do not depend on the global RNG or on the
            order of injection.
    """

    name: ClassVar[str] = ""
    #: Settings that files written before the setting existed were made with, where that differs from
    #: today's default (GenLoRA's ``reading``): such a file is read as what it was, not as today's default.
    file_defaults: ClassVar[dict[str, Any]] = {}

    r: int = 8
    alpha: float | None = None
    dropout: float = 0.0
    rslora: bool = False
    target_modules: list[str] | str = "all-linear"
    exclude_modules: list[str] | str | None = None
    modules_to_save: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, tuple):
            self.target_modules = list(self.target_modules)
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r={self.r!r} is not valid; the rank must be a positive integer.")
        if self.alpha is not None:
            if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)):
                raise ValueError(f"alpha={self.alpha!r} is not valid; give a positive number or null.")
            if not math.isfinite(self.alpha) or self.alpha <= 0:
                raise ValueError(f"alpha={self.alpha!r} is not valid; the scale must be a positive finite number.")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout!r} is not valid; it must lie in [0, 1).")
        _check_patterns("target_modules", self.target_modules, allow_none=False)
        _check_patterns("exclude_modules", self.exclude_modules, allow_none=True)
        if self.modules_to_save is not None and (
            isinstance(self.modules_to_save, str) or not all(isinstance(v, str) and v for v in self.modules_to_save)
        ):
            raise ValueError(f"modules_to_save={self.modules_to_save!r} is not valid; give a list of module names.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed={self.seed!r} is not valid; give an integer.")

    @property
    def scaling(self) -> float:
        """``s`` in ``dW = s * B @ A``."""
        alpha = 2.0 * self.r if self.alpha is None else float(self.alpha)
        return alpha / math.sqrt(self.r) if self.rslora else alpha / self.r

    def rate_keys(self) -> tuple[str, ...]:
        """The ``model.adapter_lr`` entries that may give this adapter's rate, the most specific first; the
        last names it in messages. A method whose variants train at rates of their own (GenLoRA's
        readings) adds a key per variant, so a per-method rate table follows whatever variant is chosen."""
        return (self.name,)

    def rate_multipliers(self) -> dict[str, float]:
        """The method's own factors on ``adapter_lr`` per kind of parameter, applied unless
        ``model.adapter_lr_multipliers`` gives the kind: for a method whose parts learn at rates of their
        own, so that one tuned rate trains all of them (GenLoRA's mixed reading)."""
        return {}

    @classmethod
    def options(cls) -> list[str]:
        """The method's own settings: the fields it adds to :class:`AdapterConfig`."""
        shared = {f.name for f in dataclasses.fields(AdapterConfig)}
        return [f.name for f in dataclasses.fields(cls) if f.name not in shared]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields plus the adapter name, the inverse of ``registry.config_from_dict``."""
        return {"adapter": self.name, **dataclasses.asdict(self)}


def defaults(cls: type[AdapterConfig]) -> dict[str, Any]:
    """The fields of a config class that have a plain default, with that default."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def config_differences(
    there: AdapterConfig | dict[str, Any], here: AdapterConfig | dict[str, Any], ignore: tuple[str, ...] = ()
) -> list[str]:
    """``"<key>=<there> there, <here> here"`` for every setting that differs: the one comparison
    behind every "saved for another model" sentence (checkpoints, callback state, adapter folders)."""
    there = there.to_dict() if isinstance(there, AdapterConfig) else dict(there)
    if isinstance(here, AdapterConfig) and there.get("adapter") == here.name:
        # a setting added after the file was written: the file was made with its default then
        there = {**defaults(type(here)), **type(here).file_defaults, **there}
    here = here.to_dict() if isinstance(here, AdapterConfig) else dict(here)
    keys = [k for k in dict.fromkeys([*there, *here]) if k not in ignore]
    return [f"{k}={there.get(k)!r} there, {here.get(k)!r} here" for k in keys if there.get(k) != here.get(k)]

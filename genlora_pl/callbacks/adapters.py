"""``AdapterCallback``: puts the adapters of any method into the backbone, anneals them, and keeps
their settings in checkpoints, the way Lightning's ``BaseFinetuning`` changes a model from a callback.

- Injection happens through the module's ``adapt_backbone`` hook, registered in ``setup``: it runs
  right after the backbone is built in ``configure_model``, so before the strategy wraps the model
  (DDP/FSDP) and before the optimizer is built.
- ``gate`` (multiplies the scale) and ``temperature`` (divides every RBF width) follow their
  schedules by global step; the step is also kept in the callback state.

It changes training and does not watch it: spectra, drift, plots and the summary are
:class:`~genlora_pl.callbacks.monitor.AdapterMonitor`'s.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from torch import nn

import genlora_pl.compat as compat
from genlora_pl.adapters import AdapterConfig, config_class, config_differences, config_from_dict
from genlora_pl.injection import adapter_layers, head_names, inject_adapters
from genlora_pl.schedules import Schedule


def __getattr__(name: str) -> Any:
    return compat.renamed(__name__, name)  # GenLoRACallback, until 0.3


class AdapterCallback(L.Callback):
    """Fine-tune with adapters.

    Args:
        method: an adapter method (``genlora``, ``lora``, or any registered one), or ``none`` (no
            adapters: full fine-tuning, or a linear probe with the module's ``head_only``).
        r: rank; ``null`` takes the method's default (GenLoRA 32, LoRA 8).
        alpha: scale numerator (``s = alpha / r``); ``null`` means ``2 r``.
        dropout: dropout on the adapter input.
        rslora: scale ``alpha / sqrt(r)``.
        target_modules: layers to adapt (PEFT matching, or ``all-linear``).
        exclude_modules: layers never adapted.
        modules_to_save: modules trained in full; ``head`` means the task's new head (a classifier's
            head, found from timm's ``pretrained_cfg`` or the transformers model; a causal LM has none).
        seed: seed of the adapter initialisation.
        options: the method's own settings, e.g. GenLoRA's ``{group_size: 2, kernel: gaussian,
            width0: 0.35}`` (``--adapter.options.group_size 4`` on the command line).
        gate: schedule of the gate (multiplies the adapter scale).
        temperature: schedule of the RBF temperature (divides the widths; higher = smoother).
        group_size: deprecated, use ``options.group_size``.
        kernel: deprecated, use ``options.kernel``.
        width0: deprecated, use ``options.width0``.
        log_every_n_steps: deprecated, moved to the ``monitor`` section (``AdapterMonitor``).
        plots: deprecated, moved to the ``monitor`` section (``AdapterMonitor``).
    """

    def __init__(
        self,
        method: str = "genlora",
        r: int | None = None,
        alpha: float | None = None,
        dropout: float = 0.0,
        rslora: bool = False,
        target_modules: list[str] | str = "all-linear",
        exclude_modules: list[str] | str | None = None,
        modules_to_save: list[str] | str | None = "head",
        seed: int = 0,
        options: dict[str, Any] | None = None,
        gate: Schedule | None = None,
        temperature: Schedule | None = None,
        group_size: int | None = None,
        kernel: str | None = None,
        width0: float | None = None,
        log_every_n_steps: int | None = None,
        plots: bool | None = None,
    ) -> None:
        super().__init__()
        cls = config_class("genlora" if method == "none" else method)  # unknown names: one sentence
        self.method = method
        options = compat.moved_callback_arguments(
            dict(options or {}),
            group_size=group_size,
            kernel=kernel,
            width0=width0,
            log_every_n_steps=log_every_n_steps,
            plots=plots,
        )
        unknown = sorted(set(options) - set(cls.options()))
        if unknown:
            valid = f"its options are {cls.options()}" if cls.options() else "it takes no options"
            raise ValueError(f"{unknown} are not settings of method={method!r}; {valid}.")
        kwargs: dict[str, Any] = {
            "alpha": alpha,
            "dropout": dropout,
            "rslora": rslora,
            "target_modules": target_modules,
            "exclude_modules": exclude_modules,
            "seed": seed,
            **options,
        }
        if r is not None:
            kwargs["r"] = r
        self._modules_to_save = modules_to_save
        self.config: AdapterConfig = cls(**kwargs)  # validates every value now, before any data loads
        if isinstance(modules_to_save, str) and modules_to_save != "head":
            raise ValueError(f"modules_to_save={modules_to_save!r} is not valid; give a list of names, 'head' or null.")
        self.gate = gate or Schedule()
        self.temperature = temperature or Schedule()
        if min(self.temperature.start, self.temperature.end) <= 0:
            raise ValueError(
                f"temperature start={self.temperature.start!r}, end={self.temperature.end!r} is not valid; the "
                "temperature divides every RBF width, so both must be positive."
            )
        self.step = 0
        self._new_head = head_names  # the task's, once setup has seen it (a causal LM trains no head)
        self.total_steps: float | None = None
        self._applied: tuple[float, float] | None = None
        self.adapted: list[str] = []

    # ----------------------------------------------------------------- injection
    def _resolve(self, backbone: nn.Module) -> AdapterConfig:
        saved = self._modules_to_save
        if saved == "head":
            saved = self._new_head(backbone) or None
        return type(self.config)(**{**asdict(self.config), "modules_to_save": saved})

    def inject(self, backbone: nn.Module) -> None:
        self.config = self._resolve(backbone)
        self.adapted = inject_adapters(backbone, self.config)

    @property
    def active(self) -> bool:
        return self.method != "none"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not self.active:
            return
        if not hasattr(pl_module, "adapt_backbone"):
            raise TypeError(
                f"AdapterCallback needs a module with adapt_backbone() (an AdapterTask such as ClassificationModule), "
                f"not {type(pl_module).__name__}."
            )
        self._new_head = getattr(pl_module, "new_head", head_names)
        pl_module.adapt_backbone("adapters", self.inject)

    # ----------------------------------------------------------------- annealing
    def apply_schedules(self, backbone: nn.Module, step: int, total: float) -> None:
        values = (self.gate.value(step, total), self.temperature.value(step, total))
        if values == self._applied:  # constant schedules touch the buffers once, not every step
            return
        with torch.no_grad():
            for layer in adapter_layers(backbone).values():
                layer.gate.fill_(values[0])
                layer.temperature.fill_(values[1])
        self._applied = values

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.active:
            return
        self.step = trainer.global_step
        if self.total_steps is None:
            self.total_steps = trainer.estimated_stepping_batches
        self.apply_schedules(pl_module.backbone, self.step, self.total_steps)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if not self.active:
            return {"method": "none"}
        return {"config": self.config.to_dict(), "step": self.step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "config" not in state or not self.active:
            if ("config" in state) != self.active:
                raise ValueError(
                    f"the checkpoint was trained with method={state.get('config', {}).get('adapter', 'none')!r}, "
                    f"this run uses method={self.method!r}."
                )
            return
        diff = config_differences(config_from_dict(state["config"]), self.config, ignore=("modules_to_save",))
        if diff:
            raise ValueError(f"the checkpoint was trained with other adapter settings ({'; '.join(diff)}).")
        self.step = int(state["step"])

"""``GenLoRACallback``: injects adapters, anneals them, and shows what they learn.

- Injection happens through the module's ``adapt_backbone`` hook, registered in ``setup``: it runs
  right after the backbone is built in ``configure_model``, so before the strategy wraps the model
  (DDP/FSDP) and before the optimizer is built.
- ``gate`` (multiplies the scale) and ``temperature`` (divides every RBF width) follow their
  schedules by global step; the step is also kept in the callback state.
- Every ``log_every_n_steps`` optimizer steps it measures every adapted layer (spectrum of ``dW``
  by the QR route, RBF centre drift), logs scalars (and histograms with TensorBoard), and at the end
  of fit writes ``spectra.json``, ``spectra.png`` and ``drift.png`` into the run's log folder and
  prints a summary table.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from genlora_pl.adapters import AdapterConfig, config_class, config_from_dict
from genlora_pl.distributed import full_parameters
from genlora_pl.injection import adapter_layers, head_names, inject_adapters
from genlora_pl.schedules import Schedule
from genlora_pl.spectra import adapter_spectra, centre_drift, parameter_report
from genlora_pl.state import atomic_write, atomic_write_text

METHOD_ONLY = {"group_size", "kernel", "width0"}


class GenLoRACallback(L.Callback):
    """Fine-tune with adapters.

    Args:
        method: ``genlora``, ``lora``, or ``none`` (no adapters: full fine-tuning, or a linear probe
            with the module's ``head_only``).
        r: rank; ``null`` takes the method's default (GenLoRA 32, LoRA 8).
        alpha: scale numerator (``s = alpha / r``); ``null`` means ``2 r``.
        dropout: dropout on the adapter input.
        rslora: scale ``alpha / sqrt(r)``.
        target_modules: layers to adapt (PEFT matching, or ``all-linear``).
        exclude_modules: layers never adapted.
        modules_to_save: modules trained in full; ``head`` means the backbone's classifier head
            (found from timm's ``pretrained_cfg`` or the transformers model).
        group_size: GenLoRA latent coordinates per entry (``null``: default 2).
        kernel: GenLoRA radial basis function (``null``: gaussian).
        width0: GenLoRA initial width factor (``null``: 0.35).
        seed: seed of the adapter initialisation.
        gate: schedule of the gate (multiplies the adapter scale).
        temperature: schedule of the RBF temperature (divides the widths; higher = smoother).
        log_every_n_steps: optimizer steps between spectrum / drift measurements; 0 turns them off.
        plots: write ``spectra.png`` and ``drift.png`` at the end of fit.
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
        group_size: int | None = None,
        kernel: str | None = None,
        width0: float | None = None,
        seed: int = 0,
        gate: Schedule | None = None,
        temperature: Schedule | None = None,
        log_every_n_steps: int = 50,
        plots: bool = True,
    ) -> None:
        super().__init__()
        if method != "none":
            config_class(method)  # unknown names: one sentence listing the valid ones
        self.method = method
        cls = config_class("genlora" if method == "none" else method)
        extra = {"group_size": group_size, "kernel": kernel, "width0": width0}
        given = {k for k, v in extra.items() if v is not None}
        if method != "genlora" and given:
            raise ValueError(f"{sorted(given)} are GenLoRA settings; method={method!r} does not take them.")
        kwargs: dict[str, Any] = {
            "alpha": alpha,
            "dropout": dropout,
            "rslora": rslora,
            "target_modules": target_modules,
            "exclude_modules": exclude_modules,
            "seed": seed,
            **{k: extra[k] for k in given},
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
        if log_every_n_steps < 0:
            raise ValueError(
                f"log_every_n_steps={log_every_n_steps!r} is not valid; give 0 (off) or a positive step count."
            )
        self.log_every_n_steps = log_every_n_steps
        self.plots = plots
        self.step = 0
        self.total_steps: float | None = None
        self.last_recorded: int | None = None
        self._applied: tuple[float, float] | None = None
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, float] = {}
        self.adapted: list[str] = []

    # ----------------------------------------------------------------- injection
    def _resolve(self, backbone: nn.Module) -> AdapterConfig:
        saved = self._modules_to_save
        if saved == "head":
            saved = head_names(backbone) or None
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
                f"GenLoRACallback needs a module with adapt_backbone() (like ClassificationModule), "
                f"not {type(pl_module).__name__}."
            )
        pl_module.adapt_backbone("genlora", self.inject)

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

    # ----------------------------------------------------------------- measurements
    def measure(self, backbone: nn.Module, step: int) -> dict[str, Any]:
        spectra = adapter_spectra(backbone)
        layers = {name: {**s.as_dict(), "singular_values": s.singular_values.tolist()} for name, s in spectra.items()}
        return {"step": step, "layers": layers, "drift": centre_drift(backbone)}

    @staticmethod
    def scalars(record: dict[str, Any]) -> dict[str, float]:
        out: dict[str, float] = {}
        keys = ("effective_rank", "stable_rank", "energy_rank", "top_singular_value", "relative_norm")
        for key in keys:
            values = [layer[key] for layer in record["layers"].values()]
            out[f"genlora/{key}/mean"] = sum(values) / len(values)
            out.update({f"genlora/{key}/{name}": layer[key] for name, layer in record["layers"].items()})
        for side in ("A", "B"):
            drift = {name: d[side] for name, d in record["drift"].items()}
            if drift:
                out[f"genlora/center_drift_{side}/mean"] = sum(d["center_drift_mean"] for d in drift.values()) / len(
                    drift
                )
                out[f"genlora/center_min_distance_{side}/min"] = min(d["center_min_distance"] for d in drift.values())
                out[f"genlora/latent_drift_{side}/mean"] = sum(d["latent_drift"] for d in drift.values()) / len(drift)
                out.update({f"genlora/center_drift_{side}/{n}": d["center_drift_mean"] for n, d in drift.items()})
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Measure on rank zero; every rank takes part when sharded parameters must be gathered."""
        step = trainer.global_step
        if self.last_recorded == step:  # the same on every rank, so all of them skip or all gather
            return
        self.last_recorded = step
        with full_parameters(trainer.strategy.model, pl_module.backbone):
            record = self.measure(pl_module.backbone, step) if trainer.is_global_zero else None
        if record is None:
            return
        self.history.append(record)
        scalars = self.scalars(record)
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
            writer = getattr(logger, "experiment", None)
            if hasattr(writer, "add_histogram"):  # TensorBoard
                for name, layer in record["layers"].items():
                    writer.add_histogram(f"genlora_spectrum/{name}", torch.tensor(layer["singular_values"]), step)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        if trainer.is_global_zero:
            print(f"GenLoRA: {len(self.adapted)} {self.config.name} adapters\n{parameter_report(pl_module.backbone)}")
        if self.log_every_n_steps:
            self.record(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.active and self.log_every_n_steps and trainer.global_step % self.log_every_n_steps == 0:
            self.record(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/acc"):
                self.best[key] = max(self.best.get(key, -math.inf), float(value))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        if self.log_every_n_steps:
            self.record(trainer, pl_module)
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir is a collective: every rank
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if self.history:
            payload = {"config": self.config.to_dict(), "history": self.history}
            atomic_write_text(folder / "spectra.json", json.dumps(payload) + "\n")
            if self.plots:
                from genlora_pl.plots import plot_drift, plot_spectra

                for name, figure in (
                    ("spectra.png", plot_spectra(self.history)),
                    ("drift.png", plot_drift(self.history)),
                ):
                    if figure is None:
                        continue
                    atomic_write(folder / name, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=110))
                    for logger in trainer.loggers:
                        writer = getattr(logger, "experiment", None)
                        if hasattr(writer, "add_figure"):
                            writer.add_figure(f"genlora/{name[:-4]}", figure, trainer.global_step)
        print(self.summary(pl_module.backbone, folder))

    def summary(self, backbone: nn.Module, folder: os.PathLike) -> str:
        report = parameter_report(backbone)
        last = self.history[-1]["layers"] if self.history else {}
        mean_rank = sum(v["effective_rank"] for v in last.values()) / len(last) if last else float("nan")
        rows = [
            (
                "adapter",
                f"{self.config.name} r={self.config.r}"
                + (f" g={self.config.group_size}" if hasattr(self.config, "group_size") else ""),
            ),
            ("adapted layers", str(len(report.layers))),
            (
                "trainable parameters",
                f"{report.trainable:,} ({report.adapter_params:,} adapter + {report.head:,} head)",
            ),
            ("LoRA-equivalent adapter parameters", f"{report.lora_equivalent:,}"),
            ("mean effective rank of dW", f"{mean_rank:.2f}"),
            *((f"best {k}", f"{v:.4f}") for k, v in sorted(self.best.items())),
            ("plots and spectra", str(folder)),
        ]
        width = max(len(k) for k, _ in rows)
        return "\n".join(["GenLoRA summary", *(f"  {k:<{width}}  {v}" for k, v in rows)])

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        if not self.active:
            return {"method": "none"}
        return {"config": self.config.to_dict(), "step": self.step, "best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "config" not in state or not self.active:
            if ("config" in state) != self.active:
                raise ValueError(
                    f"the checkpoint was trained with method={state.get('config', {}).get('adapter', 'none')!r}, "
                    f"this run uses method={self.method!r}."
                )
            return
        saved = config_from_dict(state["config"])
        mine = {k: v for k, v in self.config.to_dict().items() if k != "modules_to_save"}
        theirs = {k: v for k, v in saved.to_dict().items() if k != "modules_to_save"}
        if mine != theirs:
            diff = {k: (theirs.get(k), mine.get(k)) for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k)}
            raise ValueError(f"the checkpoint was trained with other adapter settings (checkpoint, now): {diff}.")
        self.step = int(state["step"])
        self.best = dict(state.get("best", {}))

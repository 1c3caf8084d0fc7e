"""``AdapterMonitor``: watches what the adapters learn, the way ``LearningRateMonitor`` watches the
learning rate. It changes nothing in training.

Every ``log_every_n_steps`` optimizer steps it measures every adapted layer: the spectrum of ``dW``
(by the QR route, without forming ``dW``) and the method's own diagnostics (GenLoRA: RBF centre
drift). Summary scalars (means over layers, the collapse alarm's minimum) go to every logger;
per-layer figures go to TensorBoard only (scalars and spectrum histograms), so ``metrics.csv`` stays
readable. At the end of fit it writes into the run folder ``spectra.json`` (every measurement),
``spectra.png``, ``diagnostics.png``, ``results.json`` (the run's summary) and prints a summary table.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from genlora_pl.adapters import AdapterLayer
from genlora_pl.checks import is_int
from genlora_pl.distributed import gathered_in_turn
from genlora_pl.files import atomic_write, atomic_write_text
from genlora_pl.injection import CONFIG_ATTR, adapter_layers
from genlora_pl.plots import plot_diagnostics, plot_spectra
from genlora_pl.quantize import frozen_bytes, frozen_kinds
from genlora_pl.spectra import adapter_diagnostics, adapter_spectra, parameter_report

SPECTRUM_KEYS = ("effective_rank", "stable_rank", "energy_rank", "top_singular_value", "relative_norm")
# Metric names whose best value is the lowest; a task adds its own with ``lower_is_better``.
_LOWER_IS_BETTER = ("loss", "perplexity", "mse", "mae", "rmse", "error")


def lower_is_better(metric: str, task: Any) -> bool:
    """Whether ``metric``'s best value is its lowest, by the names above and the task's own
    (``lower_is_better`` of the task class or module)."""
    return metric.endswith(_LOWER_IS_BETTER + tuple(getattr(task, "lower_is_better", ())))


def summary_scalars(record: dict[str, Any], layers: dict[str, AdapterLayer]) -> dict[str, float]:
    """Means over layers of the spectrum measures, and each method's diagnostics reduced as the
    method declares (``AdapterLayer.diagnostics_summary``)."""
    out: dict[str, float] = {}
    for key in SPECTRUM_KEYS:
        values = [layer[key] for layer in record["layers"].values()]
        if values:
            out[f"adapter/{key}/mean"] = sum(values) / len(values)
    reduce = {"mean": lambda v: sum(v) / len(v), "min": min, "max": max}
    classes = {type(layers[name]) for name in record["diagnostics"] if name in layers}
    for cls in classes:
        names = [n for n in record["diagnostics"] if type(layers.get(n)) is cls]
        groups = dict.fromkeys(g for n in names for g in record["diagnostics"][n])
        for stat, (label, how) in cls.diagnostics_summary.items():
            for group in groups:
                values = [record["diagnostics"][n][group][stat] for n in names if group in record["diagnostics"][n]]
                values = [v for v in values if math.isfinite(v)]
                if values:
                    out[f"adapter/{label}_{group}/{how}"] = float(reduce[how](values))
    return out


def layer_scalars(record: dict[str, Any]) -> dict[str, float]:
    """Per-layer figures (TensorBoard only): spectrum measures and the diagnostics' first stat."""
    out = {f"adapter/{key}/{name}": layer[key] for key in SPECTRUM_KEYS for name, layer in record["layers"].items()}
    for name, groups in record["diagnostics"].items():
        for group, stats in groups.items():
            out.update({f"adapter/{stat}_{group}/{name}": value for stat, value in stats.items()})
    return {k: v for k, v in out.items() if math.isfinite(v)}


class AdapterMonitor(L.Callback):
    """Measure, log, plot and summarise the adapters (see the module docstring).

    Args:
        log_every_n_steps: optimizer steps between measurements; 0 turns them off.
        plots: write ``spectra.png`` and ``diagnostics.png`` at the end of fit.
    """

    def __init__(self, log_every_n_steps: int = 50, plots: bool = True) -> None:
        super().__init__()
        if not is_int(log_every_n_steps, 0):
            raise ValueError(
                f"log_every_n_steps={log_every_n_steps!r} is not valid; give 0 (off) or a positive step count."
            )
        self.log_every_n_steps = log_every_n_steps
        self.plots = plots
        self.last_recorded: int | None = None
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, float] = {}

    @staticmethod
    def _adapted(pl_module: L.LightningModule) -> bool:
        return getattr(getattr(pl_module, "backbone", None), CONFIG_ATTR, None) is not None

    # ----------------------------------------------------------------- measurements
    @staticmethod
    def measure(backbone: nn.Module, step: int, only: set[int] | None = None) -> dict[str, Any]:
        """Spectra and diagnostics of the adapted layers (of those whose ids ``only`` holds)."""
        spectra = adapter_spectra(backbone, only)
        layers = {name: {**s.as_dict(), "singular_values": s.singular_values.tolist()} for name, s in spectra.items()}
        return {"step": step, "layers": layers, "diagnostics": adapter_diagnostics(backbone, only)}

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Measure on rank zero; every rank takes part when sharded parameters must be gathered (under
        FSDP2 one block at a time, so no rank ever holds the whole model)."""
        step = trainer.global_step
        if self.last_recorded == step:  # the same on every rank, so all of them skip or all gather
            return
        self.last_recorded = step
        record: dict[str, Any] | None = (
            {"step": step, "layers": {}, "diagnostics": {}} if trainer.is_global_zero else None
        )
        for only in gathered_in_turn(trainer.strategy.model, pl_module.backbone):
            if record is not None:
                part = self.measure(pl_module.backbone, step, only)
                record["layers"].update(part["layers"])
                record["diagnostics"].update(part["diagnostics"])
        if record is not None:  # in the model's order, whatever order the parts came in
            order = list(adapter_layers(pl_module.backbone))
            record["layers"] = {n: record["layers"][n] for n in order if n in record["layers"]}
            record["diagnostics"] = {n: record["diagnostics"][n] for n in order if n in record["diagnostics"]}
        if record is None:
            return
        self.history.append(record)
        summary = summary_scalars(record, adapter_layers(pl_module.backbone))
        for logger in trainer.loggers:
            if not isinstance(logger, TensorBoardLogger):
                logger.log_metrics(summary, step=step)
                continue
            logger.log_metrics({**summary, **layer_scalars(record)}, step=step)
            for name, layer in record["layers"].items():
                logger.experiment.add_histogram(
                    f"adapter_spectrum/{name}", torch.tensor(layer["singular_values"]), step
                )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._adapted(pl_module):
            return
        if trainer.is_global_zero:
            report = parameter_report(pl_module.backbone)
            print(f"Adapters: {len(report.layers)} {report.adapter} adapters\n{report.table(max_rows=24)}")
            rates = ", ".join(
                f"{g['name']} {g.get('initial_lr', g['lr']):g}" for o in trainer.optimizers for g in o.param_groups
            )
            print(f"learning rates: {rates} (adapter_lr: {pl_module.hparams.get('adapter_lr')})")
        if self.log_every_n_steps:
            self.record(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.log_every_n_steps and trainer.global_step % self.log_every_n_steps == 0 and self._adapted(pl_module):
            self.record(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val/") and value.numel() == 1:
                pick = min if lower_is_better(key, pl_module) else max
                self.best[key] = pick(self.best.get(key, float(value)), float(value))

    # ----------------------------------------------------------------- end of fit
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        adapted = self._adapted(pl_module)
        if adapted and self.log_every_n_steps:
            self.record(trainer, pl_module)
        folder = Path(trainer.log_dir or trainer.default_root_dir)  # log_dir is a collective: every rank
        if not trainer.is_global_zero:
            return
        folder.mkdir(parents=True, exist_ok=True)
        if self.history:
            config = getattr(pl_module.backbone, CONFIG_ATTR, None)
            payload = {"config": config.to_dict() if config else None, "history": self.history}
            atomic_write_text(folder / "spectra.json", json.dumps(payload) + "\n")
            if self.plots:
                self._write_plots(trainer, pl_module, folder)
        results = self.results(trainer, pl_module.backbone, folder)
        results["warnings"] = self.warnings(pl_module, results)
        atomic_write_text(folder / "results.json", json.dumps(results, indent=2) + "\n")
        finish = getattr(trainer.progress_bar_callback, "finish", None)
        if callable(finish):  # the bar's last frame above the summary, not drawn over or after it
            finish()
        print(self.summary(results))

    def _write_plots(self, trainer: L.Trainer, pl_module: L.LightningModule, folder: Path) -> None:
        layers = adapter_layers(pl_module.backbone)
        classes = {type(layer) for layer in layers.values()}
        figures = [("spectra.png", plot_spectra(self.history))]
        for cls in classes:
            if cls.diagnostics_summary:
                figures.append(
                    ("diagnostics.png", plot_diagnostics(self.history, cls.diagnostics_summary, cls.diagnostics_alarms))
                )
        for name, figure in figures:
            if figure is None:
                continue
            atomic_write(folder / name, lambda tmp, f=figure: f.savefig(tmp, format="png", dpi=110))
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_figure(f"adapter/{name[:-4]}", figure, trainer.global_step)

    def results(self, trainer: L.Trainer, backbone: nn.Module, folder: os.PathLike) -> dict[str, Any]:
        """What ``results.json`` holds: the adapter, its parameter budget, the last spectrum
        summary, the best and the final logged metrics."""
        out: dict[str, Any] = {"run_dir": str(folder), "global_step": trainer.global_step}
        out["frozen_base"] = {"bytes": frozen_bytes(backbone), "storage": frozen_kinds(backbone)}
        config = getattr(backbone, CONFIG_ATTR, None)
        if config is not None:
            report = parameter_report(backbone)
            out["adapter"] = config.to_dict()
            out["parameters"] = {
                "trainable": report.trainable,
                "adapter": report.adapter_params,
                "modules_to_save": report.head,
                "lora_equivalent": report.lora_equivalent,
                "adapted_layers": len(report.layers),
                "total": report.total,
            }
        else:
            out["parameters"] = {
                "trainable": sum(p.numel() for p in backbone.parameters() if p.requires_grad),
                "total": sum(p.numel() for p in backbone.parameters()),
            }
        if self.history:
            last = self.history[-1]["layers"]
            out["mean_effective_rank"] = sum(v["effective_rank"] for v in last.values()) / len(last)
        out["best"] = dict(sorted(self.best.items()))
        out["final"] = {
            k: float(v)
            for k, v in sorted(trainer.callback_metrics.items())
            if v.numel() == 1 and math.isfinite(float(v))
        }
        return out

    def warnings(self, pl_module: L.LightningModule, results: dict[str, Any]) -> list[str]:
        """What the summary must not leave unsaid: validation that never left chance level (the
        task's ``chance_level``), and a method's diagnostics alarm that is firing at the last
        measurement."""
        out = []
        chance = getattr(pl_module, "chance_level", dict)()
        best = results.get("best", {})
        for key, level in chance.items():
            if key in best and not key.endswith(_LOWER_IS_BETTER) and best[key] <= level + 0.02:
                loss = best.get("val/loss")
                out.append(
                    f"validation stayed at chance: best {key} {best[key]:.4f}, chance {level:.4f}"
                    + (
                        f", best val/loss {loss:.3f} (chance {chance['val/loss']:.3f})"
                        if loss and "val/loss" in chance
                        else ""
                    )
                    + "; nothing was learned: check the learning rates (model.adapter_lr, the optimizer's lr) for "
                    "this method, or its tuned config"
                )
        if self.history:
            layers = adapter_layers(pl_module.backbone)
            first, last = self.history[0], self.history[-1]
            before, scalars = summary_scalars(first, layers), summary_scalars(last, layers)
            for cls in {type(layer) for layer in layers.values()}:
                for stat, (threshold, meaning) in cls.diagnostics_alarms.items():
                    label, how = cls.diagnostics_summary[stat]
                    for key, value in scalars.items():
                        if key.startswith(f"adapter/{label}_") and key.endswith(f"/{how}") and value > threshold:
                            start = before.get(key, float("nan"))
                            cause = "already there at the start" if start > threshold else "it grew in training"
                            out.append(
                                f"{meaning}: {key} is {value:.3f} at step {last['step']}, {start:.3f} at step "
                                f"{first['step']} ({cause})"
                            )
        return out

    @staticmethod
    def summary(results: dict[str, Any]) -> str:
        rows = []
        adapter = results.get("adapter")
        params = results["parameters"]
        if adapter is not None:
            options = "".join(
                f" {k}={v}"
                for k, v in adapter.items()
                if k
                not in (
                    "adapter",
                    "r",
                    "alpha",
                    "dropout",
                    "rslora",
                    "target_modules",
                    "exclude_modules",
                    "modules_to_save",
                    "seed",
                )
            )
            rows += [
                ("adapter", f"{adapter['adapter']} r={adapter['r']}{options}"),
                ("adapted layers", str(params["adapted_layers"])),
                (
                    "trainable parameters",
                    f"{params['trainable']:,} ({params['adapter']:,} adapter + {params['modules_to_save']:,} head)",
                ),
                ("LoRA-equivalent adapter parameters", f"{params['lora_equivalent']:,}"),
            ]
        else:
            rows.append(("trainable parameters", f"{params['trainable']:,} of {params['total']:,}"))
        frozen = results.get("frozen_base")
        if frozen and frozen["bytes"] and frozen["storage"]:  # buffers alone (a full fine-tune) are no base
            rows.append(("frozen base memory", f"{frozen['bytes'] / 2**20:,.1f} MiB ({frozen['storage']})"))
        if "mean_effective_rank" in results:
            rows.append(("mean effective rank of dW", f"{results['mean_effective_rank']:.2f}"))
        rows += [(f"best {k}", f"{v:.4f}") for k, v in results["best"].items()]
        rows.append(("plots, spectra and results.json", results["run_dir"]))
        width = max(len(k) for k, _ in rows)
        warnings = [f"  warning: {w}." for w in results.get("warnings", [])]
        return "\n".join(["Adapter summary", *(f"  {k:<{width}}  {v}" for k, v in rows), *warnings])

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = dict(state.get("best", {}))

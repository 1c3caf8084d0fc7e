"""One trial of ``tune``: a real ``fit`` through the same LightningCLI path, in a folder of its own.

The trial's config is the resolved config of the command with the trial's values set, its step budget
(``--steps``) and its output paths moved under ``trial_<number>/``; it is written there as ``trial.yaml``
(``fit --config trial.yaml`` reruns it) and fitted in this process, its console output going to
``trial_<number>/fit.log``. :class:`Pruning` reports the metric at every validation and stops a trial
that the pruner finds unpromising.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import Callback

from genlora_pl.cli import logger_entries, run
from genlora_pl.files import atomic_write_text
from genlora_pl.tune.space import assign, lookup


class Pruning(Callback):
    """Report ``metric`` to the trial at each validation; raise ``TrialPruned`` when the pruner says so,
    except at the validation after the last step, which is the trial's score (Optuna's own Lightning
    callback lives in optuna-integration; this is all of it we need)."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        if not math.isfinite(value):
            return
        self.trial.report(value, step=trainer.global_step)
        finished = trainer.global_step >= trainer.estimated_stepping_batches  # the last validation: its score
        if not finished and self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned(f"{self.metric} {value:.4f} at step {trainer.global_step}")


def checkpoint_callbacks(config: dict[str, Any]) -> list[dict[str, Any]]:
    callbacks = lookup(config, "trainer.callbacks")[1] or []
    return [c for c in callbacks if isinstance(c, dict) and str(c.get("class_path", "")).endswith("ModelCheckpoint")]


def move_outputs(config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A copy of ``config`` that writes everything under ``folder``: the root folder, every logger's
    ``save_dir`` and any checkpoint ``dirpath``."""
    out = yaml.safe_load(yaml.safe_dump(config))
    assign(out, "trainer.default_root_dir", str(folder))
    for logger in logger_entries(out.get("trainer") or {}):
        if "save_dir" in logger["init_args"]:
            logger["init_args"]["save_dir"] = str(folder)
    for callback in checkpoint_callbacks(out):
        if (callback.get("init_args") or {}).get("dirpath"):
            callback["init_args"]["dirpath"] = str(folder / "checkpoints")
    return out


def without_outputs(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without where it writes: what two commands must share to be one study."""
    return move_outputs(config, Path("<trial>"))


def set_budget(config: dict[str, Any], steps: int, reports: int) -> None:
    """Train ``steps`` optimizer steps and validate ``reports`` times, the last at the end (the
    pruner's checkpoints and the trial's score), whatever the config's epochs or intervals."""
    every = next(steps // n for n in range(min(reports, steps), 0, -1) if steps % n == 0)
    trainer = config.setdefault("trainer", {})
    trainer.update(max_steps=steps, max_epochs=-1, val_check_interval=every, check_val_every_n_epoch=None)


def apply(config: dict[str, Any], values: dict[str, Any], keys: dict[str, str]) -> dict[str, Any]:
    """A copy of ``config`` with the trial's values (by parameter name) at their config keys."""
    out = yaml.safe_load(yaml.safe_dump(config))
    for name, value in values.items():
        assign(out, keys[name], value)
    return out


def write_config(config: dict[str, Any], path: Path, header: str) -> None:
    atomic_write_text(path, f"# {header}\n" + yaml.safe_dump(config, sort_keys=False))


@contextlib.contextmanager
def console_to(path: Path) -> Iterator[None]:
    """Send everything written to this process's stdout and stderr, Python's and C's, to ``path``."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def fit(config_path: Path, extra: list[str], callbacks: list[Any]) -> dict[str, float]:
    """Fit the trial's config in this process; the metrics of its last validation."""
    cli = run(["fit", "--config", str(config_path), *extra], callbacks=callbacks)
    return {k: float(v) for k, v in cli.trainer.callback_metrics.items() if v.numel() == 1}

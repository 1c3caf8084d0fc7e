"""What ``tune`` leaves behind: a table of trials on the console as they end, ``trials.csv``, ``best.yaml``
(the best trial's config, writing under ``best/``: ``fit --config best.yaml`` reruns it) and two plots,
``history.png`` (the metric of each trial and the best so far) and ``params.png`` (the metric against
each swept value), drawn by Optuna's own matplotlib plots."""

from __future__ import annotations

import warnings
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from genlora_pl.files import atomic_write, atomic_write_text
from genlora_pl.tune.trial import move_outputs, write_config


def value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def header(names: list[str], metric: str) -> str:
    return "  ".join(["trial".rjust(5), "state".ljust(8), metric.rjust(12), *[n.rjust(max(12, len(n))) for n in names],
                      "minutes".rjust(7)])  # fmt: skip


def row(trial: Any, names: list[str]) -> str:
    """One line of the table: number, state, value (or the last reported one), values, minutes."""
    value = trial.value
    if value is None and trial.intermediate_values:
        value = trial.intermediate_values[max(trial.intermediate_values)]
    minutes = trial.duration.total_seconds() / 60 if trial.duration else float("nan")
    params = [value_text(trial.params.get(n, "-")).rjust(max(12, len(n))) for n in names]
    shown = "-" if value is None else f"{value:.4f}"
    return "  ".join([str(trial.number).rjust(5), trial.state.name.lower().ljust(8), shown.rjust(12), *params,
                      f"{minutes:7.1f}"])  # fmt: skip


def write_csv(study: Any, path: Path) -> None:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    atomic_write_text(path, frame.to_csv(index=False))


def write_plots(study: Any, folder: Path, metric: str) -> list[Path]:
    """``history.png`` and ``params.png`` (Optuna's matplotlib plots; they need a finished trial)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        for name, draw in (("history", optuna_plots.plot_optimization_history),
                           ("params", optuna_plots.plot_slice)):  # fmt: skip
            result = draw(study, target_name=metric)
            axes = result.flat[0] if hasattr(result, "flat") else result
            figure = axes.get_figure()
            figure.set_size_inches(max(6.4, 4.0 * (result.size if hasattr(result, "size") else 1)), 4.2)
            for ax in figure.axes:  # a log axis labels its minor ticks too, over each other
                if ax.get_xscale() == "log":
                    ax.xaxis.set_minor_formatter(NullFormatter())
            atomic_write(folder / f"{name}.png", partial(figure.savefig, format="png", dpi=120, bbox_inches="tight"))
            plt.close(figure)
            written.append(folder / f"{name}.png")
    return written


def write_best(study: Any, folder: Path, metric: str) -> Path | None:
    """``best.yaml``: the best trial's config, writing under ``folder/best``."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    best = study.best_trial
    config = yaml.safe_load((folder / f"trial_{best.number}" / "trial.yaml").read_text())
    path = folder / "best.yaml"
    write_config(move_outputs(config, folder / "best"), path,
                 f"tune's best trial ({best.number}): {metric} {best.value:.4f}; rerun with "
                 f"python -m genlora_pl fit --config {path}")  # fmt: skip
    return path

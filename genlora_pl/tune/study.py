"""A ``tune`` study from start to end: the resolved config, the space, the storage, the loop of trials
(each a real fit, :mod:`genlora_pl.tune.trial`), and the report (:mod:`genlora_pl.tune.report`)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import math
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState
from tqdm.auto import tqdm

from genlora_pl.callbacks.faults import TrainingDiverged
from genlora_pl.callbacks.monitor import lower_is_better
from genlora_pl.cli import run
from genlora_pl.console import quiet
from genlora_pl.errors import is_user_error, one_line
from genlora_pl.tune.report import header, row, value_text, write_best, write_csv, write_plots
from genlora_pl.tune.space import Dimension, build_space, default_space, lookup, parse_space
from genlora_pl.tune.storage import (
    Heartbeat,
    check_storage,
    fail_stale_trials,
    load_study,
    open_storage,
    storage_url,
)
from genlora_pl.tune.trial import (
    Pruning,
    apply,
    console_to,
    fit,
    move_outputs,
    set_budget,
    without_outputs,
    write_config,
)

MAX_FAILURES = 3  # trials failing in a row (not pruned, not diverged) before a worker gives up


def resolve(fit_args: list[str]) -> dict[str, Any]:
    """The config ``fit`` would run with these arguments, as a mapping (``fit --print_config``)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run(["fit", *fit_args, "--print_config"])
        except SystemExit as stop:  # --print_config exits 0 after printing; the parser exits 2 on bad input
            if stop.code not in (0, None):
                lines = err.getvalue().strip().splitlines()
                raise ValueError(
                    (lines[-1] if lines else "the config does not parse").removeprefix("error: ")
                ) from None
        except Exception as problem:
            if not is_user_error(problem):
                raise
            raise ValueError(one_line(problem)) from None
    return yaml.safe_load(out.getvalue())


def task_of(config: dict[str, Any]) -> Any:
    """The task class of the resolved config (a classifier where the model section names none)."""
    path = lookup(config, "model.class_path")[1] or "genlora_pl.tasks.ClassificationModule"
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def choose_metric(options: argparse.Namespace, config: dict[str, Any]) -> tuple[str, str]:
    """``(metric, direction)``; a metric the task never logs in validation is refused."""
    task = task_of(config)
    metric = options.metric or task.tune_metric
    logged = task.validation_metrics
    if logged and metric not in logged:
        raise ValueError(f"--metric {metric} is not logged by {task.__name__}'s validation; choose one of "
                         f"{', '.join(logged)}.")  # fmt: skip
    if metric == "val/exact_match" and lookup(config, "model.init_args.generate_in_fit")[1] is False:
        raise ValueError("--metric val/exact_match needs generation in validation, but model.generate_in_fit "
                         "is false; set it true or choose val/loss or val/token_acc.")  # fmt: skip
    return metric, options.direction or ("minimize" if lower_is_better(metric, task) else "maximize")


def device_flags(config: dict[str, Any]) -> list[str]:
    """Every trial runs on one device (workers are the parallelism): ``auto`` is pinned to 1; more
    than one device or node is refused."""
    devices = lookup(config, "trainer.devices")[1]
    nodes = lookup(config, "trainer.num_nodes")[1] or 1
    if isinstance(devices, list):
        many = len(devices) > 1
    elif isinstance(devices, int):
        many = devices > 1 or devices == -1
    else:  # "auto", "1", or a string of device ids ("0,1")
        many = devices not in (None, "auto", "1") and len([d for d in str(devices).split(",") if d.strip()]) != 1
    if many or nodes > 1:
        raise ValueError(f"tune runs each trial on one device, but trainer.devices={devices} and "
                         f"trainer.num_nodes={nodes}; give --trainer.devices 1 and start one worker per GPU "
                         "(docs/scale-out.md, 'Tuning on a cluster').")  # fmt: skip
    return ["--trainer.devices", "1"] if devices in ("auto", None) else []


def check_trial_parses(config: dict[str, Any], dims: list[Dimension]) -> None:
    """Parse a trial config with each dimension at its low end (types, choices) before any trial runs."""
    probe = {}
    for dim in dims:
        d = dim.distribution
        probe[dim.name] = d.choices[0] if hasattr(d, "choices") else d.low
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe.yaml"
        write_config(apply(config, probe, {d.name: d.key for d in dims}), path, "tune's probe")
        try:
            resolve(["--config", str(path)])
        except ValueError as err:
            shown = ", ".join(f"{d.name}={probe[d.name]}" for d in dims)
            raise ValueError(f"a trial of this space would not run ({shown}): {err}") from None


def contains(dim: Dimension, value: Any) -> bool:
    """Whether ``value`` is one the dimension can draw."""
    d = dim.distribution
    if hasattr(d, "choices"):
        return value in d.choices
    return isinstance(value, (int, float)) and not isinstance(value, bool) and d.low <= value <= d.high


def shown_url(url: str) -> str:
    """A storage URL fit for a log: a database password is masked."""
    if "://" not in url or url.startswith("sqlite"):
        return url
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def make_sampler(name: str, seed: int, trials: int) -> Any:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    # a third of the budget (2 to 10 trials) spread at random before TPE models the rest
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, trials // 3)))


def make_pruner(name: str) -> Any:
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def on_sigterm(signum: int, frame: Any) -> None:
    """A SIGTERM between fits ends the worker with 143 (the trial under way is marked failed); inside a
    fit Lightning composes this handler into its own and stops the fit at the next step."""
    if signal.getsignal(signal.SIGTERM) is on_sigterm:  # not composed into Lightning's own handler
        raise SystemExit(143)


def run_trial(study: Any, trial: Any, base: dict[str, Any], dims: list[Dimension], options: argparse.Namespace,
              folder: Path, metric: str, extra: list[str]) -> str:  # fmt: skip
    """Fit one trial and tell the study how it ended; ``"complete"``, ``"pruned"`` or ``"failed"``."""
    own = folder / f"trial_{trial.number}"
    own.mkdir(parents=True, exist_ok=True)
    config = move_outputs(apply(base, trial.params, {d.name: d.key for d in dims}), own)
    if options.steps:
        set_budget(config, options.steps, options.reports)
    values = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    write_config(config, own / "trial.yaml", f"tune trial {trial.number} of study {study.study_name}: {values}")
    heartbeat = Heartbeat(trial)
    try:
        with console_to(own / "fit.log"):
            metrics = fit(own / "trial.yaml", ["--trainer.enable_progress_bar", "false", *extra],
                          [Pruning(trial, metric)])  # fmt: skip
    except optuna.TrialPruned as pruned:
        trial.set_user_attr("pruned_at", str(pruned))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    except TrainingDiverged as err:  # a rate too high for the method: as bad as a trial gets
        trial.set_user_attr("failure", one_line(err))
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "pruned"
    except BaseException as err:  # a SIGTERM (exit 143), Ctrl-C or a broken trial: failed, the study goes on
        reason = f"stopped (exit {err.code})" if isinstance(err, SystemExit) else one_line(err)
        trial.set_user_attr("failure", reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        if isinstance(err, Exception):
            return "failed"
        raise
    finally:
        heartbeat.stop()
    value = metrics.get(metric)
    if value is None or not math.isfinite(value):
        trial.set_user_attr("failure", f"the fit logged no finite {metric} (it logged {', '.join(sorted(metrics))})")
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "failed"
    study.tell(trial, value)
    return "complete"


def tune(options: argparse.Namespace, fit_args: list[str]) -> int:
    """Run (or resume) the study of ``fit_args`` with ``tune``'s ``options``; the exit status."""
    quiet()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    base = resolve(fit_args)
    if options.space:
        dims = build_space(parse_space(options.space), base)
        current = {d.name: lookup(base, d.key)[1] for d in dims}
        # the config as it is, as the first trial, where it lies in the space
        start = current if all(contains(d, current[d.name]) for d in dims) else {}
    else:
        dims, start = default_space(base)
    metric, direction = choose_metric(options, base)
    extra = device_flags(base)
    check_trial_parses(base, dims)
    config_file = next(fit_args[i + 1] if a == "--config" else a.split("=", 1)[1]
                       for i, a in enumerate(fit_args) if a == "--config" or a.startswith("--config="))  # fmt: skip
    root = Path(lookup(base, "trainer.default_root_dir")[1] or "outputs")
    folder = Path(options.output_dir or root / "tune")
    name = options.study_name or Path(config_file).stem
    url = storage_url(options.storage, folder)
    if options.storage:
        check_storage(url)
    recipe = {
        "config": without_outputs({k: v for k, v in base.items() if k != "ckpt_path"}),
        "space": {d.name: d.spec for d in dims},
        "metric": metric,
        "direction": direction,
        "steps": options.steps,
        "reports": options.reports if options.steps else None,
    }
    for dim in dims:  # the swept values are the trials', not the recipe's
        parent, _, leaf = dim.key.rpartition(".")
        node = lookup(recipe["config"], parent)[1]
        if isinstance(node, dict):
            node.pop(leaf, None)
    marker = folder / "study_name"  # which study's trials the folder holds: two never share trial_<n>/
    held = marker.read_text().strip() if marker.is_file() else name
    if held != name:
        raise ValueError(f"the output folder {folder} holds the trials of study {held!r}; give study {name!r} "
                         "another --output_dir.")  # fmt: skip
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        storage = open_storage(url)
        study, created = load_study(storage, name, direction, recipe, make_sampler(options.sampler, options.seed,
                                                                                  options.trials),
                                    make_pruner(options.pruner))  # fmt: skip
    except BaseException:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    if created and start:
        study.enqueue_trial(start)
    if not marker.is_file():
        marker.write_text(name + "\n")
    names = [d.name for d in dims]
    distributions = {d.name: d.distribution for d in dims}
    print(f"study {name!r} in {shown_url(url)}: {options.trials} trials, {metric} ({direction}), over "
          + "; ".join(f"{d.name} {d.spec}" for d in dims) + f"\ntrials write into {folder}/trial_<n>/ (fit.log: "
          "each trial's output)")  # fmt: skip
    finished_states = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))
    bar = tqdm(total=options.trials, initial=min(done, options.trials), desc="trials", unit="trial",
               dynamic_ncols=True, file=sys.stderr, disable=None)  # fmt: skip
    bar.write(header(names, metric))
    for old in study.get_trials(deepcopy=False):
        if old.state != TrialState.WAITING:
            bar.write(row(old, names) + ("  (earlier)" if old.state in finished_states else ""))
    previous = signal.signal(signal.SIGTERM, on_sigterm)
    failures = 0
    try:
        while True:
            for number in fail_stale_trials(study):
                bar.write(f"trial {number}: its worker stopped without a word; marked failed")
            counted = study.get_trials(deepcopy=False, states=(*finished_states, TrialState.RUNNING))
            if len(counted) >= options.trials:
                break
            if failures >= MAX_FAILURES:
                last = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))[-1]
                bar.write(f"error: {MAX_FAILURES} trials in a row failed; the last, trial {last.number}: "
                          f"{last.user_attrs.get('failure')} (see {folder}/trial_{last.number}/fit.log)")  # fmt: skip
                return 1
            trial = study.ask(distributions)
            outcome = run_trial(study, trial, base, dims, options, folder, metric, extra)
            failures = failures + 1 if outcome == "failed" else 0
            bar.n = min(len(study.get_trials(deepcopy=False, states=finished_states)), options.trials)
            bar.refresh()
            bar.write(row(study.get_trials(deepcopy=False)[trial.number], names))
    finally:
        signal.signal(signal.SIGTERM, previous)
        bar.close()
        if study.get_trials(deepcopy=False):  # failed and pruned trials too: their reasons are in it
            write_csv(study, folder / "trials.csv")
    waiting = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    best_path = write_best(study, folder, metric)
    if best_path is None:
        print(f"no trial completed; trials.csv and the trials' fit.log in {folder} say why.")
        return 1
    write_plots(study, folder, metric)
    best = study.best_trial
    print(
        f"best: trial {best.number}, {metric} {best.value:.4f} with "
        + ", ".join(f"{k}={value_text(v)}" for k, v in best.params.items())
    )
    print(f"wrote {folder}/trials.csv, history.png, params.png and {best_path}: python -m genlora_pl fit --config "
          f"{best_path}")  # fmt: skip
    if waiting:
        print(f"{len(waiting)} trial(s) still running in other workers: " + ", ".join(str(t.number) for t in waiting))
    return 0

"""``python -m genlora_pl tune`` through the command line, on the debug config: trials that are real fits,
a best.yaml that ``fit`` reruns to the same metric, resuming, killed workers, two workers on one study,
and nothing written for bad input."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import ROOT
from optuna.trial import TrialState

from genlora_pl.__main__ import main

DEBUG = str(ROOT / "configs" / "debug.yaml")
FAST = ["--monitor.plots", "false"]  # the trials' own spectra plots: time the tests need not spend


def results(folder: Path) -> dict:
    (path,) = folder.rglob("results.json")
    return json.loads(path.read_text())


def trials_of(url: str, name: str = "debug") -> list:
    return optuna.load_study(storage=url, study_name=name).get_trials()


def test_tune_runs_real_fits_and_best_yaml_reproduces_the_best_trial(tmp_path, capsys):
    out = tmp_path / "study"
    args = ["tune", "--config", DEBUG, "--trials", "2", "--output_dir", str(out), *FAST]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "best: trial" in printed.out and "fit --config" in printed.out
    assert "model.adapter_lr" in printed.out  # the table of trials, as they end
    for name in ("study.db", "trials.csv", "best.yaml", "history.png", "params.png"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    assert float(rows[0]["params_model.adapter_lr"]) == 0.02  # the config as it is: the first trial
    assert float(rows[1]["params_model.adapter_lr"]) != 0.02
    for number in (0, 1):  # every trial in a folder of its own, its metric where the study has it
        trial = out / f"trial_{number}"
        assert (trial / "trial.yaml").is_file() and (trial / "fit.log").is_file()
        assert results(trial)["final"]["val/acc"] == pytest.approx(float(rows[number]["value"]), abs=1e-7)
    study = optuna.load_study(storage=f"sqlite:///{out / 'study.db'}", study_name="debug")
    assert main(["fit", "--config", str(out / "best.yaml"), "--trainer.enable_progress_bar", "false"]) == 0
    again = results(out / "best")
    assert again["final"]["val/acc"] == pytest.approx(study.best_value, abs=1e-7)
    assert again["adapter"]["r"] == 8

    assert main(args) == 0  # the same command again: the study is complete, nothing runs
    assert "(earlier)" in capsys.readouterr().out
    assert len(trials_of(f"sqlite:///{out / 'study.db'}")) == 2
    assert main([*args, "--study_name", "other"]) == 2  # another study would write its trial_0/ over this one's
    assert capsys.readouterr().err.strip().endswith("holds the trials of study 'debug'; give study 'other' another "
                                                    "--output_dir.")  # fmt: skip


def test_a_space_of_ones_own_over_several_keys(tmp_path):
    out = tmp_path / "study"
    space = ["adapter.r=choice(4, 8)", "model.optimizer.init_args.lr=loguniform(1e-3, 1e-1)"]
    assert main(["tune", "--config", DEBUG, "--trials", "1", "--steps", "4", "--reports", "2", "--sampler", "random",
                 "--output_dir", str(out), "--space", *space, *FAST]) == 0  # fmt: skip
    (trial,) = trials_of(f"sqlite:///{out / 'study.db'}")
    assert set(trial.params) == {"adapter.r", "model.optimizer.lr"}
    assert sorted(trial.intermediate_values) == [2, 4]  # --reports 2 over --steps 4: validations at 2 and 4
    import yaml

    ran = yaml.safe_load((out / "trial_0" / "trial.yaml").read_text())
    assert ran["adapter"]["r"] == trial.params["adapter.r"]
    assert ran["model"]["init_args"]["optimizer"]["init_args"]["lr"] == trial.params["model.optimizer.lr"]
    assert results(out / "trial_0")["global_step"] == 4


def test_bad_input_writes_nothing(tmp_path, capsys):
    out = tmp_path / "study"
    for bad in (["--metric", "val/f1"], ["--space", "adapter.rank=int(4, 16)"], ["--trials", "0"],
                ["--space", "model.adapter_lr=loguniform(0.1, 0.01)"], ["--storage", "nosuchdb://x"]):  # fmt: skip
        assert main(["tune", "--config", DEBUG, "--output_dir", str(out), *bad]) == 2, bad
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, (bad, errors)
        assert not out.exists(), bad


def run_tune(out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "genlora_pl", "tune", "--config", DEBUG, "--output_dir", str(out), *FAST, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for(path: Path, process: subprocess.Popen, limit: float = 300.0) -> None:
    """Until ``path`` exists (a hang guard many times the few seconds it takes)."""
    start = time.monotonic()
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() - start < limit, f"{path} never appeared"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_killed_or_stopped_study_resumes_keeping_its_finished_trials(tmp_path):
    out, url = tmp_path / "study", f"sqlite:///{tmp_path / 'study' / 'study.db'}"
    first = run_tune(out, "--trials", "3")
    wait_for(out / "trial_1" / "trial.yaml", first)  # trial 0 is done, trial 1 under way
    first.send_signal(signal.SIGKILL)
    first.wait()
    trial0 = trials_of(url)[0]
    assert trial0.state == TrialState.COMPLETE
    again = run_tune(out, "--trials", "3")
    stdout, stderr = again.communicate(timeout=600)
    assert again.returncode == 0, stderr[-3000:]
    assert "trial 1: its worker stopped without a word; marked failed" in stdout
    trials = trials_of(url)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].value == trial0.value and trials[0].datetime_complete == trial0.datetime_complete

    stopped = run_tune(out, "--trials", "4")  # one trial more, stopped as a scheduler stops a job
    wait_for(out / "trial_4" / "fit.log", stopped)
    time.sleep(1.0)
    stopped.send_signal(signal.SIGTERM)
    stopped.communicate(timeout=300)
    assert stopped.returncode == 143
    assert trials_of(url)[4].state == TrialState.FAIL
    assert trials_of(url)[4].user_attrs["failure"] == "stopped (exit 143)"
    last = run_tune(out, "--trials", "4")
    stdout, stderr = last.communicate(timeout=600)
    assert last.returncode == 0, stderr[-3000:]
    states = [t.state for t in trials_of(url)]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 2


@pytest.mark.slow
def test_two_workers_share_one_journal_study_without_losing_or_repeating_a_trial(tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    journal = out / "study.journal"
    workers = [run_tune(out, "--trials", "4", "--storage", f"journal:{journal}") for _ in range(2)]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=900)
        assert worker.returncode == 0, stderr[-3000:]
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    storage = JournalStorage(JournalFileBackend(str(journal)))
    trials = optuna.load_study(storage=storage, study_name="debug").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert {t.user_attrs["worker_pid"] for t in trials} <= {w.pid for w in workers}
    for t in trials:  # each trial fitted once: one run in its folder
        assert len(list((out / f"trial_{t.number}").rglob("results.json"))) == 1
    assert sum(t.params["model.adapter_lr"] == 0.02 for t in trials) == 1  # the config's own rate, queued once

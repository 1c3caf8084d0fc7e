"""``tune``'s parts on their own: the search space against a resolved config, the default space per
method and reading, the trial budget, the study's storage and its stale trials."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import optuna
import pytest
from optuna.trial import TrialState

from genlora_pl.tune.space import (
    FULL_RANGE,
    HEAD_RANGE,
    OPTIMIZER_LR,
    RATE_RANGES,
    build_space,
    default_space,
    parse_distribution,
)
from genlora_pl.tune.storage import check_storage, fail_stale_trials, load_study
from genlora_pl.tune.trial import Pruning, move_outputs, set_budget

optuna.logging.set_verbosity(optuna.logging.WARNING)


def resolved(method="genlora", options=None, adapter_lr=None, head_only=False):
    """The shape of what ``fit --print_config`` gives, reduced to what the space reads."""
    return {
        "trainer": {
            "max_steps": 6,
            "default_root_dir": "outputs/x",
            "logger": [{"class_path": "CSVLogger", "init_args": {"save_dir": "outputs/x", "name": "csv"}}],
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"dirpath": "ck"}}
            ],
        },
        "model": {
            "class_path": "genlora_pl.ClassificationModule",
            "init_args": {
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01, "weight_decay": 0.0}},
                "lr_scheduler": None,
                "adapter_lr": {"genlora": 0.02, "lora": 0.003} if adapter_lr is None else adapter_lr,
                "head_only": head_only,
            },
        },
        "adapter": {"method": method, "r": 32, "options": options},
    }


@pytest.mark.parametrize(
    ("text", "kind", "low", "high", "log"),
    [
        ("loguniform(1e-3, 1e-1)", "FloatDistribution", 1e-3, 1e-1, True),
        ("uniform(0, 0.2)", "FloatDistribution", 0.0, 0.2, False),
        ("int(8, 64)", "IntDistribution", 8, 64, False),
        ("logint(8, 128)", "IntDistribution", 8, 128, True),
    ],
)
def test_ranges_become_optuna_distributions(text, kind, low, high, log):
    d = parse_distribution("k", text)
    assert (type(d).__name__, d.low, d.high, d.log) == (kind, low, high, log)


def test_choices_keep_their_types():
    assert parse_distribution("k", "choice(1, 2.5, signed, true)").choices == (1, 2.5, "signed", True)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("loguniform(1e-1, 1e-3)", "an inverted range; give low < high"),
        ("uniform(0.1, 0.1)", "an empty range; give low < high"),
        ("loguniform(0, 1)", "a log range needs low > 0"),
        ("int(1.5, 3)", "int takes two integers"),
        ("uniform(1)", "uniform takes two finite numbers"),
        ("choice()", "an empty choice"),
        ("choice(1, 1)", "repeats a value"),
        ("normal(0, 1)", r"give loguniform\(low, high\)"),
    ],
)
def test_bad_ranges_are_one_sentence(text, says):
    with pytest.raises(ValueError, match=rf"^the space of k is '{re.escape(text)}'.*{says}"):
        parse_distribution("k", text)


def test_keys_are_read_as_fit_takes_them_and_checked_against_the_config():
    config = resolved(options={"group_size": 2})
    dims = build_space([("model.adapter_lr.genlora", "loguniform(1e-3, 1e-1)"),
                        ("model.optimizer.lr", "loguniform(1e-4, 1e-2)"),
                        ("adapter.options.width0", "uniform(0.1, 1.0)"),
                        ("adapter.r", "choice(16, 32)")], config)  # fmt: skip
    assert [d.key for d in dims] == [
        "model.init_args.adapter_lr.genlora",
        "model.init_args.optimizer.init_args.lr",
        "adapter.options.width0",  # not in the config's options, but an option of the method
        "adapter.r",
    ]
    assert dims[0].name == "model.adapter_lr.genlora"
    with pytest.raises(ValueError, match="adapter_lr.genlora_sgned is not a setting.*valid keys are dora, genlora,"):
        build_space([("model.adapter_lr.genlora_sgned", "loguniform(1e-3, 1e-1)")], config)
    with pytest.raises(ValueError, match=r"adapter.options.widht0 is not a setting.*valid keys are center_init"):
        build_space([("adapter.options.widht0", "uniform(0.1, 1.0)")], config)
    with pytest.raises(ValueError, match="model.init_args.lr_scheduler is null there"):
        build_space([("model.lr_scheduler.init_args.warmup_fraction", "uniform(0, 0.2)")], config)
    with pytest.raises(ValueError, match="is a section, not a setting; sweep one of its keys: genlora, lora"):
        build_space([("model.adapter_lr", "loguniform(1e-3, 1e-1)")], config)
    with pytest.raises(ValueError, match=r"adapter.r holds an integer \(32\); give int\(low, high\)"):
        build_space([("adapter.r", "uniform(8, 64)")], config)


@pytest.mark.parametrize(
    ("method", "options", "table", "key", "start"),
    [
        ("genlora", None, None, "genlora", 0.02),  # bumps: the plain entry
        ("genlora", {"reading": "signed"}, {"genlora": 0.02, "genlora_signed": 0.003}, "genlora_signed", 0.003),
        ("genlora", {"reading": "mixed", "group_size": 2}, {"genlora": 0.02}, "genlora_mixed", None),
        ("lora", None, None, "lora", 0.003),
        ("dora", None, 0.001, None, 0.001),  # one number for every method: that number is swept
    ],
)
def test_the_default_space_is_the_rate_the_method_and_reading_train_at(method, options, table, key, start):
    dims, first = default_space(resolved(method, options, table))
    (dim,) = dims
    assert dim.key == "model.init_args.adapter_lr" + (f".{key}" if key else "")
    low, high = RATE_RANGES[key or method]
    assert (dim.distribution.low, dim.distribution.high, dim.distribution.log) == (low, high, True)
    assert first == ({dim.name: start} if start is not None else {})  # the config as it is: the first trial


def test_without_adapters_the_optimizer_rate_is_swept():
    (dim,), _ = default_space(resolved("none"))
    assert (dim.key, dim.distribution.low, dim.distribution.high) == (OPTIMIZER_LR, *FULL_RANGE)
    (dim,), first = default_space(resolved("genlora", head_only=True))
    assert (dim.key, dim.distribution.low, dim.distribution.high) == (OPTIMIZER_LR, *HEAD_RANGE)
    assert first == {dim.name: 0.01}


@pytest.mark.parametrize(("steps", "reports", "every"), [(100, 4, 25), (10, 4, 5), (7, 4, 7), (3, 4, 1)])
def test_a_step_budget_validates_at_its_end(steps, reports, every):
    config = resolved()
    set_budget(config, steps, reports)
    trainer = config["trainer"]
    assert (trainer["max_steps"], trainer["val_check_interval"], trainer["max_epochs"]) == (steps, every, -1)
    assert steps % every == 0 and steps // every <= reports


def test_trials_write_only_into_their_own_folder(tmp_path):
    moved = move_outputs(resolved(), tmp_path / "trial_3")
    assert moved["trainer"]["default_root_dir"] == str(tmp_path / "trial_3")
    assert moved["trainer"]["logger"][0]["init_args"]["save_dir"] == str(tmp_path / "trial_3")
    assert moved["trainer"]["callbacks"][0]["init_args"]["dirpath"] == str(tmp_path / "trial_3" / "checkpoints")
    assert resolved()["trainer"]["default_root_dir"] == "outputs/x"  # a copy: the base is untouched


def test_storages_that_cannot_open_are_refused_without_creating_anything(tmp_path):
    with pytest.raises(ValueError, match="the folder .*no_dir does not exist"):
        check_storage(f"sqlite:///{tmp_path}/no_dir/study.db")
    with pytest.raises(ValueError, match="the folder .*no_dir does not exist"):
        check_storage(f"journal:{tmp_path}/no_dir/study.journal")
    with pytest.raises(ValueError, match=r"^the storage nosuchdb://x cannot be opened \("):
        check_storage("nosuchdb://x")
    check_storage(f"sqlite:///{tmp_path}/study.db")
    check_storage(str(tmp_path / "study.journal"))
    assert list(tmp_path.iterdir()) == []


def test_a_study_of_another_recipe_is_refused_naming_where_they_differ(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    recipe = {"config": {"trainer": {"max_steps": 6}}, "metric": "val/acc"}
    study, created = load_study(url, "s", "maximize", recipe, None, None)
    assert created and study.user_attrs["recipe"] == recipe
    again, created = load_study(url, "s", "maximize", recipe, None, None)
    assert not created and again._study_id == study._study_id
    other = {"config": {"trainer": {"max_steps": 600}}, "metric": "val/acc"}
    with pytest.raises(ValueError, match=r"differ at config.trainer.max_steps \(6 there, 600 here\)"):
        load_study(url, "s", "maximize", other, None, None)


def test_trials_whose_worker_is_gone_are_failed_and_live_ones_kept(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    host = socket.gethostname()
    trials = [study.ask() for _ in range(3)]
    workers = [(dead_pid, host, time.time()), (os.getpid(), host, time.time()), (1, "elsewhere", time.time() - 3600)]
    for trial, (pid, where, beat) in zip(trials, workers, strict=True):
        trial.set_user_attr("worker_pid", pid)
        trial.set_user_attr("worker_host", where)
        trial.set_user_attr("heartbeat", beat)
    assert sorted(fail_stale_trials(study)) == [trials[0].number, trials[2].number]
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    assert study.get_trials()[0].user_attrs["failure"] == "its worker stopped without a word"
    assert fail_stale_trials(study) == []


def test_pruning_reports_each_validation_and_stops_a_trial_the_pruner_rejects():
    import torch

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    trial = study.ask()
    callback = Pruning(trial, "val/acc")
    trainer = SimpleNamespace(sanity_checking=True, callback_metrics={"val/acc": torch.tensor(0.1)}, global_step=0,
                              estimated_stepping_batches=20)  # fmt: skip
    callback.on_validation_end(trainer, None)  # the sanity check's batches are not a score
    trainer.sanity_checking, trainer.global_step = False, 5
    trainer.callback_metrics["val/acc"] = torch.tensor(0.75)
    callback.on_validation_end(trainer, None)  # above the pruner's threshold: the fit goes on
    trainer.global_step, trainer.callback_metrics["val/acc"] = 10, torch.tensor(0.25)
    with pytest.raises(optuna.TrialPruned, match="val/acc 0.2500 at step 10"):
        callback.on_validation_end(trainer, None)
    assert study.get_trials()[0].intermediate_values == {5: 0.75, 10: 0.25}
    trainer.global_step, trainer.callback_metrics["val/acc"] = 20, torch.tensor(0.2)
    callback.on_validation_end(trainer, None)  # the validation after the last step: reported, never pruned
    assert study.get_trials()[0].intermediate_values[20] == pytest.approx(0.2)

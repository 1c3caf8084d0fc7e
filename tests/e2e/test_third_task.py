"""A task of our own (``tests/plugins/regression.py``: one file, its data module beside it, nothing
else touched) goes through fit, validate, test, predict, export and resume on the real CLI, with
GenLoRA and LoRA adapters on its ``nn.Sequential`` backbone."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from genlora_pl.__main__ import main
from genlora_pl.checkpoints import read_checkpoint

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


def config(tmp_path: Path, method: str, steps: int) -> str:
    data = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "max_steps": steps,
            "val_check_interval": 1.0,
            "log_every_n_steps": 1,
            "enable_progress_bar": False,
            "default_root_dir": str(tmp_path),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}},
            "callbacks": [
                {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint", "init_args": {"save_last": True}}
            ],
        },
        "model": {
            "class_path": "regression.RegressionModule",
            "init_args": {
                "hidden": 32,
                "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}},
                "adapter_lr": 0.02 if method == "genlora" else 0.005,
            },
        },
        "data": {"class_path": "regression.RegressionData", "init_args": {"rows": 320, "batch_size": 32}},
        "adapter": {"method": method, "r": 4, "target_modules": ["0", "2"]},
        "monitor": {"log_every_n_steps": 4, "plots": False},
    }
    path = tmp_path / "regression.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.fixture
def plugins(monkeypatch):
    from genlora_pl.errors import TASK_PATHS
    from genlora_pl.tasks import TASKS

    monkeypatch.syspath_prepend(str(PLUGINS))
    yield
    sys.modules.pop("regression", None)  # and out of the process-wide registry, as if never imported
    TASKS.pop("regression", None)
    TASK_PATHS.pop("regression", None)


@pytest.mark.parametrize("method", ["genlora", "lora"])
def test_a_task_of_our_own_goes_through_every_command(tmp_path, plugins, method, capsys):
    cfg = config(tmp_path, method, steps=32)
    assert main(["fit", "--config", cfg]) == 0
    last = next(tmp_path.rglob("last.ckpt"))
    checkpoint = read_checkpoint(last)
    assert checkpoint["task"] == "regression" and checkpoint["task_class"] == "regression.RegressionModule"
    assert checkpoint["trained_only"]  # the frozen MLP comes back from its builder, not the file
    metrics = (last.parents[1] / "metrics.csv").read_text()
    assert "val/mse" in metrics and "train/mae" in metrics
    import csv

    val = [float(r["val/loss"]) for r in csv.DictReader((last.parents[1] / "metrics.csv").open()) if r.get("val/loss")]
    assert len(val) == 4 and val[-1] < 0.9 * val[0]  # it learned: validation loss fell epoch by epoch
    best = json.loads((last.parents[1] / "results.json").read_text())["best"]
    assert best["val/mse"] == pytest.approx(min(val), rel=1e-5)  # lower is better: the summary's best is the min

    capsys.readouterr()
    for command in ("validate", "test"):
        assert main([command, "--config", cfg, "--ckpt_path", str(last)]) == 0
    out = capsys.readouterr().out
    assert "test/mse" in out and "val/mae" in out

    assert main(["predict", "--config", cfg, "--ckpt_path", str(last)]) == 0
    rows = [json.loads(line) for line in (last.parents[1] / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 32 and {"index", "prediction"} <= set(rows[0]) and isinstance(rows[0]["prediction"], float)

    out_dir = tmp_path / "export"
    assert main(["export", "--ckpt_path", str(last), "--output_dir", str(out_dir)]) == 0
    peft_config = json.loads((out_dir / "peft" / "adapter_config.json").read_text())
    assert peft_config["task_type"] is None and sorted(peft_config["target_modules"]) == ["0", "2"]
    assert (out_dir / "merged").is_dir() and (out_dir / "adapter" / "adapter_model.safetensors").is_file()

    # resume: two more steps from last.ckpt continue the run (global step 32 -> 34)
    assert main(["fit", "--config", cfg, "--trainer.max_steps", "34", "--ckpt_path", str(last)]) == 0
    resumed = read_checkpoint(next(tmp_path.rglob("last.ckpt")))
    assert resumed["global_step"] == 34
    assert not torch.equal(resumed["state_dict"]["backbone.4.weight"], checkpoint["state_dict"]["backbone.4.weight"])

"""Where runs write: one folder per run (a resumed fit continues in it), evaluation commands open no
new folder, predictions land beside the checkpoint's run, a failed start leaves nothing, and the
terminal shows our lines rather than third-party chatter."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from helpers import ROOT, run_cli, write_text_csv, write_tiny_bert

DEBUG = ["--config", "debug.yaml", "--trainer.enable_progress_bar", "false"]


def versions(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "outputs" / "debug" / "csv").glob("version_*"))


def test_resume_continues_in_its_run_folder_and_evaluations_open_none(tmp_path):
    # a bare config name: the shipped debug.yaml, found from a folder that holds no configs/
    out = run_cli("fit", *DEBUG, "--trainer.max_steps", "3", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "outputs" / "debug" / "csv" / "version_0"
    last = run / "checkpoints" / "last.ckpt"
    assert versions(tmp_path) == ["version_0"] and last.is_file()

    out = run_cli("fit", *DEBUG, "--trainer.max_steps", "6", "--ckpt_path", str(last), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert versions(tmp_path) == ["version_0"]  # no version_1: the resumed fit wrote into its own run
    with open(run / "metrics.csv") as f:
        steps = {int(row["step"]) for row in csv.DictReader(f)}
    assert min(steps) < 3 <= max(steps) and max(steps) >= 5  # rows of both parts of the run
    results = json.loads((run / "results.json").read_text())
    assert results["global_step"] == 6

    for command in ("validate", "test"):
        out = run_cli(command, *DEBUG, "--ckpt_path", str(last), cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        saved = json.loads((run / f"{command}_results.json").read_text())
        prefix = "val" if command == "validate" else "test"
        assert saved["metrics"][f"{prefix}/acc"] >= 0 and saved["checkpoint"] == str(last)
    out = run_cli("predict", *DEBUG, "--ckpt_path", str(last), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 64  # max_eval_samples of the debug config's test split
    assert [r["index"] for r in rows] == list(range(64))
    for row in rows:
        assert row["prediction"] in [str(d) for d in range(10)]
        assert abs(sum(row["probabilities"].values()) - 1) < 1e-4
        assert row["prediction"] == max(row["probabilities"], key=row["probabilities"].get)
    assert str(run / "predictions.jsonl") in out.stdout
    assert versions(tmp_path) == ["version_0"]  # evaluation opened no folder
    assert not (tmp_path / "outputs" / "debug" / "config.yaml").exists()


def test_a_fit_that_fails_before_training_leaves_nothing(tmp_path):
    out = run_cli("fit", *DEBUG, "--data.init_args.image_size", "48", cwd=tmp_path)  # fails in the sanity check
    assert out.returncode == 2 and "error: the images are 48x48" in out.stderr
    assert not (tmp_path / "outputs").exists(), sorted(p.name for p in (tmp_path / "outputs").rglob("*"))


def test_predictions_of_text_data_carry_the_text_and_label_names(tmp_path):
    bert = write_tiny_bert(tmp_path / "bert")
    data = write_text_csv(tmp_path / "train.csv")
    common = ["--config", str(ROOT / "configs" / "debug.yaml"), "--trainer.enable_progress_bar", "false"]
    common += [
        "--model.backbone",
        f"hf:{bert}",
        "--model.backbone_kwargs",
        "{}",
        "--adapter.target_modules",
        "[query, value]",
    ]
    common += ["--data.class_path", "genlora_pl.data.TextClassificationData", "--data.init_args.train_file", str(data)]
    out = run_cli("fit", *common, "--trainer.max_steps", "2", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    for chatter in ("LOAD REPORT", "💡 Tip", "LeafSpec", "Loading weights", "/-2"):
        assert chatter not in text, chatter
    ckpt = next(tmp_path.rglob("last.ckpt"))
    out = run_cli("predict", *common, "--ckpt_path", str(ckpt), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (ckpt.parents[1] / "predictions.jsonl").read_text().splitlines()]
    assert rows and all(r["prediction"] in ("finance", "sports") and r["text"] for r in rows)
    assert "LOAD REPORT" not in out.stdout + out.stderr

    out = run_cli("export", "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "export"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((tmp_path / "export" / "merged" / "config.json").read_text())
    assert config["id2label"] == {"0": "finance", "1": "sports"}
    peft = json.loads((tmp_path / "export" / "peft" / "adapter_config.json").read_text())
    assert peft["base_model_name_or_path"] == str(bert)  # the name the config gave, not a resolved copy

"""lm-evaluation-harness on a fit's exports, offline: a task file written from our data, run by the
harness's own HF model on the merged folder, the PEFT folder and the checkpoint, generates what our
``predict`` generates and scores what our ``test`` scores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import run_cli, write_sums, write_tiny_llama

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.slow  # a fit, an export and four harness runs: about 2 minutes on 2 cores

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("harness")
    write_tiny_llama(folder / "llama")
    write_sums(folder / "train.jsonl", n=64)
    write_sums(folder / "heldout.jsonl", n=12, seed=1)
    config = {
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_steps": 40, "val_check_interval": 40, "check_val_every_n_epoch": None,
                    "enable_progress_bar": False, "default_root_dir": str(folder / "outputs"), "logger": False},
        "adapter": {"method": "lora", "r": 4, "target_modules": PROJECTIONS},
        "model": {
            "class_path": "genlora_pl.tasks.CausalLMModule",
            "init_args": {"backbone": f"hf:{folder / 'llama'}", "max_new_tokens": 3, "adapter_lr": 0.02,
                          "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}}},
        },
        "data": {
            "class_path": "genlora_pl.data.InstructionData",
            "init_args": {"train_file": str(folder / "train.jsonl"), "test_file": str(folder / "heldout.jsonl"),
                          "batch_size": 8, "eval_batch_size": 1, "max_length": 32, "answer_extractor": "exact"},
        },
    }  # fmt: skip
    (folder / "lm.yaml").write_text(yaml.safe_dump(config))
    out = run_cli("fit", "--config", "lm.yaml", cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = next(folder.rglob("*.ckpt"))
    out = run_cli("export", "--ckpt_path", str(ckpt), "--output_dir", str(folder / "export"), cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    return folder, ckpt


def test_the_harness_generates_and_scores_what_we_do(fitted):
    folder, ckpt = fitted
    out = run_cli("task_file", "--fit_config", "lm.yaml", "--output_dir", "tasks", "--name", "sums", cwd=folder)
    assert out.returncode == 0, out.stderr[-3000:]
    task = folder / "tasks" / "sums.yaml"
    assert len((folder / "tasks" / "sums.jsonl").read_text().splitlines()) == 12

    ours = run_cli("predict", "--config", "lm.yaml", "--ckpt_path", str(ckpt), cwd=folder)
    assert ours.returncode == 0, ours.stderr[-3000:]
    predictions = [json.loads(line) for line in next(folder.rglob("predictions.jsonl")).read_text().splitlines()]
    tested = run_cli("test", "--config", "lm.yaml", "--ckpt_path", str(ckpt), cwd=folder)
    assert tested.returncode == 0, tested.stderr[-3000:]
    score = json.loads(next(folder.rglob("test_results.json")).read_text())["metrics"]["test/exact_match"]

    generated = {p["index"]: p["generation"].strip() for p in predictions}
    assert len(set(generated.values())) > 1  # a real comparison: the model says different things
    for model, extra in (
        ("export/merged", []),
        ("export/peft", ["--base", f"hf:{folder / 'llama'}"]),  # the adapter folder names the base as given
        (str(ckpt), []),
    ):
        result = folder / f"{Path(model).name}.json"
        out = run_cli("evaluate", "--model", model, "--tasks", str(task), "--batch_size", "1",
                      "--output", str(result), *extra, cwd=folder)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        saved = json.loads(result.read_text())
        harness = {s["doc_id"]: s["filtered"][0] for s in saved["samples"]["sums"]}
        assert harness == generated, model  # the same greedy answers, prompt by prompt ...
        assert saved["results"]["sums"]["exact_match,exact"] == pytest.approx(score)  # ... and the same score
        assert "exact_match" in out.stdout  # the harness's table


def test_bad_inputs_get_one_line(fitted):
    folder, _ = fitted
    out = run_cli("evaluate", "--model", "nowhere", "--tasks", "sums", cwd=folder)
    assert out.returncode == 2 and "model='nowhere' is not a fit checkpoint" in out.stderr
    out = run_cli("evaluate", "--model", "export/merged", "--tasks", "no_such_task_here", cwd=folder)
    assert out.returncode == 2 and "'no_such_task_here' is not a task the harness knows here" in out.stderr
    (folder / "taken.json").write_text("{}")
    out = run_cli("evaluate", "--model", "export/merged", "--tasks", "x.yaml", "--output", "taken.json", cwd=folder)
    assert out.returncode == 2 and "output='taken.json' exists" in out.stderr
    assert (folder / "taken.json").read_text() == "{}"
    out = run_cli("task_file", "--fit_config", "lm.yaml", "--output_dir", "tasks", "--split", "train", cwd=folder)
    assert out.returncode == 2 and "split='train' is not valid" in out.stderr

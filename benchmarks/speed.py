"""Speed of GenLoRA against our LoRA, PEFT's LoRA and the frozen-backbone lower bound.

Prints markdown tables. For each backbone, every variant is built in this one process and timed
round by round, interleaved (a drift in clock or load hits all variants alike); a figure is the
median over the timed rounds.

- train step (forward, cross-entropy, backward, AdamW step) of GenLoRA, our LoRA and PEFT's LoRA
  at the same rank on the same layers (every linear layer but the head; the head is trained too);
- the lower bound of any adapter method: the frozen backbone's forward and backward with
  activation gradients only (gradients flow from the loss down to the embedding output, no weight
  gradient, no optimizer);
- inference: the bare backbone, GenLoRA merged in place (wrappers kept), and GenLoRA after
  ``merge_and_unload`` (the bare architecture again);
- spectra logging: one ``AdapterCallback.measure`` (spectra and drift of every layer) as a share
  of the steps between two logs at the callback's default interval;
- peak memory of each train step: CUDA's peak allocation on a GPU; on the CPU the peak resident
  memory of a child process during three steps (sampled every millisecond), minus its resident
  memory before the first step: activations, gradients and optimizer state, not the weights;
- aten operations dispatched per training step (forward and backward, counted with a
  ``TorchDispatchMode``), a device-independent count of the kernels a GPU would launch, and the
  number of trainable tensors the optimizer holds, on a 12-block ViT with adapters on qkv, proj,
  fc1 and fc2 (48 layers).

    python benchmarks/speed.py                          # CPU here: ViT-S/16 batch 8, MiniLM batch 32 x 128
    python benchmarks/speed.py --device cuda --vit-batch 64 --text-batch 128
    python benchmarks/speed.py --ops-only                # just the op counts (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import torch
from torch import nn

METHODS = ("lower bound", "GenLoRA", "GenLoRA signed", "GenLoRA mixed", "LoRA", "PEFT LoRA")  # GenLoRA: the default
# Each GenLoRA reading's options; mixed at twice the rank, so its bump rows are as many as the others' rows
READINGS = {"GenLoRA": {}, "GenLoRA signed": {"reading": "signed"}, "GenLoRA mixed": {"reading": "mixed"}}


def genlora_options(method: str, rank: int) -> dict[str, Any]:
    """A GenLoRA method's config options at the benchmark's rank (``mixed``: twice it)."""
    return {"r": 2 * rank if method == "GenLoRA mixed" else rank, **READINGS[method]}


INFERENCE = ("bare", "GenLoRA merged", "GenLoRA merge_and_unload")


# ------------------------------------------------------------------------------------ models
def backbone(name: str) -> nn.Module:
    from genlora_pl.backbones import build_backbone

    torch.manual_seed(0)
    if name == "vit":
        # Random weights: speed does not depend on them, and no pretrained ViT is offline.
        return build_backbone("timm:vit_small_patch16_224", num_classes=10, pretrained=False)
    return build_backbone("hf:sentence-transformers/all-MiniLM-L6-v2", num_classes=3)


def batch(name: str, size: int, tokens: int, device: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if name == "vit":
        inputs = {"x": torch.randn(size, 3, 224, 224, generator=g)}
    else:
        inputs = {
            "input_ids": torch.randint(1000, 30000, (size, tokens), generator=g),
            "attention_mask": torch.ones(size, tokens, dtype=torch.long),
        }
    labels = torch.randint(0, 3, (size,), generator=g)
    return {k: v.to(device) for k, v in inputs.items()}, labels.to(device)


def logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(inputs["x"]) if "x" in inputs else model(**inputs)
    return out if isinstance(out, torch.Tensor) else out.logits


def embedding_output(model: nn.Module) -> nn.Module:
    """The module whose output is the first activation the adapted layers see."""
    return model.patch_embed if hasattr(model, "patch_embed") else model.base_model.embeddings


def build(name: str, method: str, device: str, rank: int) -> tuple[nn.Module, torch.optim.Optimizer | None]:
    from genlora_pl import GenLoRAConfig, LoRAConfig, inject_adapters
    from genlora_pl.injection import head_names, selected_layers

    model = backbone(name)
    heads = head_names(model)
    if method == "lower bound":
        model.requires_grad_(False)
        # Activation gradients only: the embedding output asks for a gradient, no weight does.
        embedding_output(model).register_forward_hook(lambda m, i, o: o.requires_grad_(True))
        return model.to(device).train(), None
    if method == "PEFT LoRA":
        from peft import LoraConfig, get_peft_model

        targets = selected_layers(model, LoRAConfig(r=rank, target_modules="all-linear"))
        model = get_peft_model(
            model, LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, modules_to_save=heads)
        )
    else:
        if method.startswith("GenLoRA"):
            options = genlora_options(method, rank)
            config = GenLoRAConfig(target_modules="all-linear", modules_to_save=heads, **options)
        else:
            config = LoRAConfig(r=rank, target_modules="all-linear", modules_to_save=heads)
        inject_adapters(model, config)
    model = model.to(device).train()
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)


def train_step(model: nn.Module, opt: torch.optim.Optimizer | None, inputs: dict, labels: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(logits(model, inputs), labels)
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)


def inference_models(name: str, device: str, rank: int) -> dict[str, nn.Module]:
    from genlora_pl import GenLoRAConfig, inject_adapters
    from genlora_pl.injection import merge_adapters, merge_and_unload

    models = {"bare": backbone(name)}
    for key in INFERENCE[1:]:
        model = backbone(name)
        inject_adapters(model, GenLoRAConfig(r=rank, target_modules="all-linear"))
        with torch.no_grad():  # a trained-looking adapter: B != 0
            for n, p in model.named_parameters():
                if n.endswith("amps_B"):
                    p.fill_(0.01)
        if key == "GenLoRA merged":
            merge_adapters(model)
        else:
            model = merge_and_unload(model)
        models[key] = model
    return {k: m.to(device).eval() for k, m in models.items()}


# ------------------------------------------------------------------------------------ timing
def timed_rounds(fns: dict[str, Any], rounds: int, warmup: int, sync: Any) -> dict[str, float]:
    """Median seconds per call of each function, calls interleaved round by round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + rounds):
        for key, fn in fns.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_memory_mb(name: str, method: str, args: argparse.Namespace) -> float:
    """Extra memory of a train step in MB (see the module docstring for how it is measured)."""
    if args.device == "cuda":
        model, opt = build(name, method, "cuda", args.rank)
        inputs, labels = batch(name, args.vit_batch if name == "vit" else args.text_batch, args.tokens, "cuda")
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            train_step(model, opt, inputs, labels)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        del model, opt
        torch.cuda.empty_cache()
        return peak / 2**20
    child = [sys.executable, __file__, "--memory-child", name, method, "--vit-batch", str(args.vit_batch)]
    child += ["--text-batch", str(args.text_batch), "--tokens", str(args.tokens), "--threads", str(args.threads)]
    child += ["--rank", str(args.rank)]
    out = subprocess.run(child, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["mb"]


def resident_mb() -> float:
    """This process's resident memory now (Linux), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(name: str, method: str, args: argparse.Namespace) -> None:
    """Peak resident memory during three train steps above the memory before them.

    Sampled every millisecond from a thread (torch releases the GIL inside its ops): the process's
    lifetime peak (``ru_maxrss``) is set by loading the weights, not by training.
    """
    model, opt = build(name, method, "cpu", args.rank)
    inputs, labels = batch(name, args.vit_batch if name == "vit" else args.text_batch, args.tokens, "cpu")
    before = resident_mb()
    peak, stop = [before], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], resident_mb())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(3):
        train_step(model, opt, inputs, labels)
    stop.set()
    sampler.join()
    print(json.dumps({"mb": peak[0] - before}))


# ------------------------------------------------------------------------------------ op counts
OPS_TARGETS = ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]


def count_ops(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> int:
    """aten operations dispatched by one forward and backward (the optimizer step excluded)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.ops += 1
            return func(*args, **(kwargs or {}))

    nn.functional.cross_entropy(logits(model, inputs), labels).backward()  # warm-up: lazy state settles
    model.zero_grad(set_to_none=True)
    with Counter():
        nn.functional.cross_entropy(logits(model, inputs), labels).backward()
    return Counter.ops


def op_counts(args: argparse.Namespace) -> list[str]:
    from genlora_pl import GenLoRAConfig, LoRAConfig, inject_adapters

    inputs, labels = batch("vit", 1, args.tokens, args.device)
    rows = []
    for method in ("frozen backbone, head trained", "LoRA", *READINGS, "PEFT LoRA"):
        model = backbone("vit")
        if method == "LoRA" or method in READINGS:
            cls, extra = (GenLoRAConfig, genlora_options(method, args.rank)) if method in READINGS else (LoRAConfig, {})
            inject_adapters(
                model, cls(**{"r": args.rank, **extra}, target_modules=OPS_TARGETS, modules_to_save=["head"])
            )
        elif method == "PEFT LoRA":
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=args.rank, lora_alpha=args.rank, target_modules=OPS_TARGETS,
                                                     modules_to_save=["head"]))  # fmt: skip
        else:
            model.requires_grad_(False)
            model.head.requires_grad_(True)
        model = model.to(args.device).train()
        tensors = sum(1 for p in model.parameters() if p.requires_grad)
        rows.append((method, count_ops(model, inputs, labels), tensors))
    lora = dict((m, o) for m, o, _ in rows)["LoRA"]
    lines = [
        f"\n**aten ops per training step (forward + backward), ViT-S/16 (12 blocks), adapters on "
        f"{', '.join(OPS_TARGETS)} (48 layers), rank {args.rank}, batch 1**\n",
        "| method | ops per step | / our LoRA | trainable tensors |",
        "|---|---|---|---|",
    ]
    lines += [f"| {m} | {o:,} | {o / lora:.3f} | {t} |" for m, o, t in rows]
    return lines


# ------------------------------------------------------------------------------------ report
def bench(name: str, args: argparse.Namespace) -> list[str]:
    from genlora_pl.callbacks import AdapterMonitor

    size = args.vit_batch if name == "vit" else args.text_batch
    inputs, labels = batch(name, size, args.tokens, args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    runs = {m: build(name, m, args.device, args.rank) for m in METHODS}
    train = timed_rounds(
        {m: (lambda r=runs[m]: train_step(*r, inputs, labels)) for m in METHODS}, args.rounds, args.warmup, sync
    )
    callback = AdapterMonitor()  # its default logging interval and its measurement
    genlora_model = runs["GenLoRA"][0]
    spectra = timed_rounds({"spectra": lambda: callback.measure(genlora_model, 0)}, args.rounds, 1, sync)["spectra"]
    interval = callback.log_every_n_steps
    del runs
    models = inference_models(name, args.device, args.rank)

    def infer(model: nn.Module) -> None:
        with torch.no_grad():
            logits(model, inputs)

    infer_t = timed_rounds({k: (lambda m=m: infer(m)) for k, m in models.items()}, args.rounds, args.warmup, sync)
    del models
    memory = {m: peak_memory_mb(name, m, args) for m in METHODS} if args.memory else {}

    what = "ViT-S/16, 224 px" if name == "vit" else f"MiniLM-L6 (real weights), {args.tokens} tokens"
    lines = [
        f"\n**{what}, batch {size}, rank {args.rank} on every linear layer but the head, {device_name(args)}**\n",
        "| train step | ms (median) | / our LoRA | / lower bound | peak step memory (MB) |",
        "|---|---|---|---|---|",
    ]
    for m in METHODS:
        mem = f"{memory[m]:.0f}" if m in memory else "-"
        lines.append(
            f"| {m} | {1000 * train[m]:.1f} | {train[m] / train['LoRA']:.3f} | "
            f"{train[m] / train['lower bound']:.3f} | {mem} |"
        )
    lines += ["", "| inference (no grad) | ms (median) | / bare |", "|---|---|---|"]
    lines += [f"| {k} | {1000 * t:.1f} | {t / infer_t['bare']:.3f} |" for k, t in infer_t.items()]
    share = spectra / (interval * train["GenLoRA"])
    lines.append(
        f"\nSpectra + drift logging: {1000 * spectra:.1f} ms per record, every {interval} steps: "
        f"{100 * share:.2f} % of GenLoRA training time."
    )
    return lines


def device_name(args: argparse.Namespace) -> str:
    if args.device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbones", nargs="+", default=["vit", "minilm"], choices=["vit", "minilm"])
    parser.add_argument("--vit-batch", type=int, default=8)
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds; the figure is their median")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=32, help="rank of every adapter method")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    parser.add_argument("--memory-child", nargs=2, metavar=("BACKBONE", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--ops-only", action="store_true", help="only count the ops per step (no timing)")
    parser.add_argument(
        "--write", action="store_true", help="also put the tables into benchmarks/README.md (between its speed markers)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*args.memory_child, args)
        return
    lines = [
        f"torch {torch.__version__}; GenLoRA r={args.rank} g=2 (defaults), LoRA and PEFT LoRA r={args.rank}, alpha=r"
    ]
    lines += op_counts(args)
    print("\n".join(lines), flush=True)
    if not args.ops_only:
        for name in args.backbones:
            table = bench(name, args)
            print("\n".join(table), flush=True)
            lines += table
    if args.write:
        write_readme(lines, args.device)


def write_readme(lines: list[str], device: str) -> None:
    """Replace the block between ``<!-- speed:<device> -->`` and ``<!-- /speed:<device> -->`` in
    benchmarks/README.md with these tables (the block is added at the end when missing)."""
    from pathlib import Path

    from genlora_pl.files import atomic_write_text

    readme = Path(__file__).resolve().parent / "README.md"
    text = readme.read_text()
    start, end = f"<!-- speed:{device} -->", f"<!-- /speed:{device} -->"
    block = f"{start}\n" + "\n".join(lines).strip() + f"\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(readme, text)
    print(f"written into {readme}")


if __name__ == "__main__":
    main()

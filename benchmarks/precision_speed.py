"""Train-step time of GenLoRA and LoRA on a timm ViT under fp32, bf16-mixed and bf16-true.

Prints a markdown table: median milliseconds per optimizer step (forward, backward, AdamW step) over
``--steps`` timed steps after ``--warmup`` steps, every configuration measured in the same process,
interleaved round by round so drifts in clock or load hit all of them alike.

    python benchmarks/precision_speed.py                      # GPU if there is one: ViT-B/16, batch 64
    python benchmarks/precision_speed.py --device cpu --model vit_tiny_patch16_224 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch

from genlora_pl import GenLoRAConfig, LoRAConfig, inject_adapters


def build(model_name: str, method: str, precision: str, device: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = timm.create_model(model_name, pretrained=False, num_classes=10).to(device)
    cls = GenLoRAConfig if method == "genlora" else LoRAConfig
    inject_adapters(
        model, cls(r=32, target_modules=["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"], modules_to_save=["head"])
    )
    if precision == "bf16-true":
        model.to(torch.bfloat16)
    params = [p for p in model.parameters() if p.requires_grad]
    return model.train(), torch.optim.AdamW(params, lr=1e-3)


def step(model, opt, x, y, precision: str, device: str) -> None:
    dtype = torch.bfloat16 if precision != "32-true" else None
    with torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        logits = model(x.to(dtype) if dtype is not None and precision == "bf16-true" else x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--compile",
        choices=["none", "model", "generator"],
        default="none",
        help="torch.compile the whole adapted model, or only the GenLoRA generator function",
    )
    parser.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed", "bf16-true"])
    parser.add_argument("--methods", nargs="+", default=["genlora", "lora"])
    args = parser.parse_args()
    if args.compile == "generator":
        import genlora_pl.adapters.genlora as genlora_module

        genlora_module.generate = torch.compile(genlora_module.generate, dynamic=True)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    configs = [(m, p) for m in args.methods for p in args.precisions]
    runs = {c: build(args.model, *c, args.device) for c in configs}
    if args.compile == "model":
        runs = {c: (torch.compile(m), o) for c, (m, o) in runs.items()}
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    times: dict = {c: [] for c in configs}
    for i in range(args.warmup + args.steps):
        for c in configs:  # interleaved
            model, opt = runs[c]
            sync()
            t = time.perf_counter()
            step(model, opt, x, y, c[1], args.device)
            sync()
            if i >= args.warmup:
                times[c].append(time.perf_counter() - t)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(
        f"{args.model}, batch {args.batch}, 224 px, r=32 on qkv/proj/fc1/fc2 + head, {name}, "
        f"torch {torch.__version__}, compile={args.compile}\n"
    )
    print("| adapter | trainable params | precision | ms / step (median) | images / s |")
    print("|---|---|---|---|---|")
    for c in configs:
        ms = 1000 * statistics.median(times[c])
        trainable = sum(p.numel() for p in runs[c][0].parameters() if p.requires_grad)
        print(f"| {c[0]} | {trainable:,} | {c[1]} | {ms:.1f} | {args.batch / ms * 1000:.0f} |")


if __name__ == "__main__":
    main()

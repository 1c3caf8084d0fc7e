"""Where a GenLoRA train step spends its time: torch.profiler's top operators for one adapter method
and precision on a timm ViT (the same setup as precision_speed.py).

    python benchmarks/profile_step.py --method genlora --precision bf16-mixed
"""

from __future__ import annotations

import argparse

import torch
from precision_speed import build, step
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--method", default="genlora", choices=["genlora", "lora"])
    parser.add_argument("--precision", default="bf16-mixed", choices=["32-true", "bf16-mixed", "bf16-true"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()
    model, opt = build(args.model, args.method, args.precision, args.device)
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)
    for _ in range(3):
        step(model, opt, x, y, args.precision, args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step(model, opt, x, y, args.precision, args.device)
        if args.device == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if args.device == "cuda" else "cpu_time_total"
    print(f"{args.method} {args.precision} {args.model} batch {args.batch}, 3 steps")
    print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()

"""Matrix-level capacity: how well each adapter method fits a given update of one layer.

The cheap benchmark that decides generator design before any task is run (minutes, not hours). One
``nn.Linear(n, m)`` with a seeded weight ``W0`` is wrapped by each method through the public API
(``config_class``, ``adapter_class``), and Adam fits the layer's own update (``delta_matrix()``, so
DoRA's magnitudes count) to a target ``T``, full batch:

    loss = ||(dW - T) L||_F^2 / ||T L||_F^2            # L = I: Frobenius; L L^T = C: through inputs

``C`` is the second moment of the layer's inputs (what a loss sees of ``dW`` when inputs are far
from white); on the synthetic targets here it is the identity (white inputs). The score is the relative
residual ``sqrt(loss)`` of the best rate, beside LoRA's floor at the same rank (the truncated SVD
of ``T L`` is LoRA's optimum, so what LoRA can reach is known exactly).

Methods are matched by budget: LoRA r = 1, 2, 8 (``--budgets``), DoRA at the same ranks (its
magnitudes make it larger: its count is printed), and GenLoRA at r=32 (``--genlora-r``) in each
reading with the largest group size whose parameters are <= 1.2x LoRA's at that rank (``mixed`` at twice
that rank from g=2 on: half its basis vectors are bumps).

Targets: ``rank1`` (a generic rank-1 matrix), ``rank8`` (generic rank 8), ``spectrum`` (singular
values 1/i over 64 random directions); every target has unit Frobenius norm and comes from
``--seeds``. ``memory`` is the memorisation target: ``N`` key -> value pairs through the layer
(``--pairs``; keys ``X (n, N)`` random, or real ones with ``--keys``; values ``Y (m, N)`` random unit
vectors), fitted as ``||dW X - Y||_F^2 / ||Y||_F^2``; beside the residual it counts the pairs recalled
(a key's output is nearest its own value), and LoRA's optimum of its budget (reduced-rank regression)
is the floor. ``--batch B`` fits it on ``B`` pairs a step (epochs in a seeded order, 10 % warm-up then
linear decay, as the tasks train), which is where memorising in a short budget and full-batch
capacity part. Rows go to ``results/fit_runs.jsonl`` (one per method, target, shape, seed and rate),
a table is printed (markdown) and ``results/fit.png`` plots residual (memory: recall) against parameters.

    python benchmarks/fit.py                                  # 576 x 576, seed 0, 500 steps
    python benchmarks/fit.py --shapes 576x576 576x1536 1536x576 --seeds 0 1 --steps 1000
    python benchmarks/fit.py --methods "GenLoRA signed" --targets rank1   # one family, one target
    python benchmarks/fit.py --targets memory --pairs 64 512 --batch 8 --steps 200   # memorising, as a task trains

Real keys (``--keys``): the inputs of some layers at the positions that predict an answer, over a
task's training rows, as ``benchmarks/quality.py`` writes them for tuning entries with ``save_keys``;
each layer of the file is fitted (its ``W0`` and input width, at the shape's output width):

    python benchmarks/fit.py --targets memory --keys benchmarks/results/keys/facts_seed0.safetensors --pairs 64 512

Real updates (``--updates``): files that ``benchmarks/quality.py`` writes for tuning entries with
``save_updates`` (a full fine-tuning's ``W - W0`` or a trained LoRA's ``s B A`` per layer, and the
inputs' second moment at the pretrained model); every layer is fitted in Frobenius norm and through
its inputs (``--inputs``: the file holding the moments, by default the update file itself), at the
budgets of ``--budgets`` (LoRA's floor is its SVD optimum, so LoRA itself is not fitted):

    python benchmarks/fit.py --updates benchmarks/results/updates/cipher_words_160_full_fine-tuning_seed0.safetensors \
        --budgets 2 --methods GenLoRA --rates 3e-3 1e-2 3e-2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

HERE = Path(__file__).resolve().parent
RATES = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
TARGETS = ("rank1", "rank8", "spectrum", "memory")
BUDGET_RANKS = (1, 2, 8)
SLACK = 1.2  # GenLoRA may use up to 1.2x LoRA's parameters at the rank it is matched with


def make_target(kind: str, m: int, n: int, seed: int) -> torch.Tensor:
    """A unit-norm ``(m, n)`` target: generic rank 1, generic rank 8, or a 1/i spectrum on 64 random
    directions."""
    gen = torch.Generator().manual_seed(1000 + seed)
    if kind in ("rank1", "rank8"):
        k = 1 if kind == "rank1" else 8
        t = torch.randn(m, k, generator=gen) @ torch.randn(k, n, generator=gen)
    elif kind == "spectrum":
        u = torch.linalg.qr(torch.randn(m, 64, generator=gen))[0]
        v = torch.linalg.qr(torch.randn(n, 64, generator=gen))[0]
        t = u @ torch.diag(1.0 / torch.arange(1, 65).float()) @ v.T
    else:
        raise ValueError(f"target={kind!r} is unknown; choose one of {', '.join(TARGETS[:3])}.")
    return t / t.norm()


def make_memory(m: int, n: int, pairs: int, seed: int, keys: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """``pairs`` keys ``(n, N)`` and values ``(m, N)``: keys random normal, or ``pairs`` rows of ``keys (K, n)``
    drawn without replacement, scaled to a mean squared norm of 1 (Adam's steps mean the same for any
    key file); values random unit vectors (so the nearest value is the one of largest dot product)."""
    gen = torch.Generator().manual_seed(2000 + seed)
    if keys is None:
        x = torch.randn(n, pairs, generator=gen)
    else:
        x = keys[torch.randperm(keys.shape[0], generator=gen)[:pairs]].T.double()
    x = x / x.pow(2).sum(0).mean().sqrt()
    y = torch.randn(m, pairs, generator=gen)
    return {"keys": x.float(), "values": y / y.norm(dim=0)}


def recall(outputs: torch.Tensor, values: torch.Tensor) -> float:
    """Share of pairs whose output (column of ``outputs``) is nearest its own value among all the unit
    ``values``: the memory recalls it."""
    nearest = (outputs.T.double() @ values.double()).argmax(1)
    return float((nearest == torch.arange(values.shape[1])).float().mean())


def memory_floor(keys: torch.Tensor, values: torch.Tensor, rank: int) -> tuple[float, float]:
    """LoRA's optimum of rank ``rank``: the reduced-rank regression ``min ||dW X - Y||`` (``Y`` projected on
    the row space of ``X``, then truncated to ``rank``), as (relative residual, recall)."""
    q = torch.linalg.qr(keys.T.double())[0]  # (N, n): a basis of what dW X can be
    fitted = values.double() @ q @ q.T
    u, s, vh = torch.linalg.svd(fitted, full_matrices=False)
    best = (u[:, :rank] * s[:rank]) @ vh[:rank]
    return float((best - values.double()).norm() / values.norm()), recall(best, values)


def svd_floor(target: torch.Tensor, rank: int, root: torch.Tensor | None = None) -> float:
    """Relative residual of the best rank-``rank`` fit of ``target`` (in the ``root``-weighted norm)."""
    t = target if root is None else target @ root
    s = torch.linalg.svdvals(t.double())
    return float((s[rank:].pow(2).sum() / s.pow(2).sum()).sqrt())


def methods(
    m: int,
    n: int,
    families: list[str] | None,
    budgets: tuple[int, ...] = BUDGET_RANKS,
    genlora_r: int = 32,
    genlora_options: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Every method at every budget: ``{"name", "adapter", "options", "budget"}``; GenLoRA at rank
    ``genlora_r`` with the largest group size within the budget's slack, and ``genlora_options``
    (named in the method's name) on top."""
    extra = genlora_options or {}
    suffix = "".join(f" {k}={v}" for k, v in extra.items())
    from genlora_pl.adapters.genlora import GenLoRAConfig

    out = []
    for r in budgets:
        out.append({"name": f"LoRA r={r}", "adapter": "lora", "options": {"r": r}, "budget": r})
        out.append({"name": f"DoRA r={r}", "adapter": "dora", "options": {"r": r}, "budget": r})
        for reading in ("signed", "bumps", "mixed"):
            # mixed: half its basis vectors are bump rows, so it has twice genlora_r to keep bumps' count of
            # them; at g=1 it is all bumps, the bumps reading itself (left out: the same fit twice)
            rank = 2 * genlora_r if reading == "mixed" else genlora_r
            fits = [
                g for g in range(2 if reading == "mixed" else 1, 65)
                if GenLoRAConfig(r=rank, group_size=g, reading=reading).num_parameters(m, n) <= SLACK * r * (m + n)
            ]  # fmt: skip
            if fits:
                g = fits[-1]
                options = {"r": rank, "group_size": g, "reading": reading, **extra}
                try:
                    GenLoRAConfig(**options)
                except ValueError:
                    continue  # an option of another reading only (width_spread, kernel_norm)
                name = f"GenLoRA {reading} r={rank} g={g}{suffix}"
                out.append({"name": name, "adapter": "genlora", "options": options, "budget": r})
    return [x for x in out if not families or any(x["name"].startswith(f) for f in families)]


def fit_one(
    spec: dict[str, Any],
    w0: torch.Tensor,
    case: dict[str, torch.Tensor | None],
    lr: float,
    steps: int,
    batch: int = 0,
) -> dict[str, Any]:
    """Adam on one fresh adapter (seed 0) for ``steps`` steps; the final relative residual (and, for a
    memory case, the recall). ``case`` holds a ``target`` (and the inputs' moment ``cov``, or None) or
    ``keys`` and ``values``; ``batch`` > 0 fits a memory ``batch`` pairs a step, warm-up and decay."""
    from genlora_pl.adapters import adapter_class, config_class

    base = nn.Linear(w0.shape[1], w0.shape[0], bias=False)
    with torch.no_grad():
        base.weight.copy_(w0)
    base.weight.requires_grad_(False)
    layer = adapter_class(spec["adapter"])(base, config_class(spec["adapter"])(**spec["options"]), "layer")
    params = [p for p in layer.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr)
    keys, values, target, cov = case.get("keys"), case.get("values"), case.get("target"), case.get("cov")

    def residual(pairs: torch.Tensor | None = None) -> torch.Tensor:
        dw = layer.delta_matrix()
        if keys is not None:
            x, y = (keys, values) if pairs is None else (keys[:, pairs], values[:, pairs])
            return (dw @ x - y).pow(2).sum() / y.pow(2).sum()
        e = dw - target
        if cov is None:
            return e.pow(2).sum() / target.pow(2).sum()
        return (e @ cov * e).sum() / (target @ cov * target).sum()

    batches = minibatches(keys.shape[1], batch, steps) if keys is not None and batch else None
    if batches is not None:
        warm = max(1, steps // 10)  # the tasks' schedule: 10 % linear warm-up, then linear decay to 0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: (s + 1) / warm if s < warm else (steps - s) / (steps - warm)
        )
    start = time.perf_counter()
    for _ in range(steps):
        loss = residual(next(batches) if batches is not None else None)
        if not torch.isfinite(loss):
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if batches is not None:
            sched.step()
    with torch.no_grad():
        final = float(residual().sqrt())
        recalled = recall(layer.delta_matrix() @ keys, values) if keys is not None else None
    ok = math.isfinite(final)
    return {"residual": final if ok else None, "recall": recalled if ok else None,
            "params": sum(p.numel() for p in params), "seconds": time.perf_counter() - start}  # fmt: skip


def minibatches(pairs: int, batch: int, steps: int):
    """Indices of ``batch`` pairs a step for ``steps`` steps: epochs over the pairs, each in a seeded order
    (an epoch's remainder smaller than a batch is dropped, as a loader with drop_last does)."""
    gen = torch.Generator().manual_seed(0)
    order, at = torch.randperm(pairs, generator=gen), 0
    for _ in range(steps):
        if at + batch > pairs:
            order, at = torch.randperm(pairs, generator=gen), 0
        yield order[at : at + batch]
        at += batch


def input_root(cov: torch.Tensor) -> torch.Tensor:
    """``L`` with ``L L^T = cov`` (symmetric square root), for the floor through the inputs."""
    vals, vecs = torch.linalg.eigh(cov.double())
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def real_cases(files: list[Path], inputs: Path | None) -> list[dict[str, Any]]:
    """One case per layer of each update file and per norm (``frobenius``, ``inputs``); targets scaled
    to unit norm in that norm (the relative residual does not change, Adam's step sizes then mean
    the same on every layer)."""
    from safetensors.torch import load_file

    moments = load_file(str(inputs)) if inputs else {}
    cases = []
    for file in files:
        tensors = load_file(str(file))
        source = moments or tensors
        for key in [k for k in tensors if k.endswith(".delta")]:
            name = key[: -len(".delta")]
            delta, w0 = tensors[key].double(), tensors[f"{name}.w0"]
            cov = source.get(f"{name}.inputs")
            label = f"{file.stem}:{name}"
            cases.append({"label": label, "norm": "frobenius", "target": (delta / delta.norm()).float(), "w0": w0,
                          "cov": None, "root": None})  # fmt: skip
            if cov is not None:
                cov = cov.double()
                scale = (delta @ cov * delta).sum().sqrt()
                cases.append({"label": label, "norm": "inputs", "target": (delta / scale).float(), "w0": w0,
                              "cov": cov.float(), "root": input_root(cov).float()})  # fmt: skip
    return cases


def key_layers(path: Path) -> list[tuple[str, int, int, torch.Tensor, torch.Tensor]]:
    """``(label, n, m, W0, keys (K, n))`` of each layer in a keys file of quality.py's ``save_keys``."""
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    out = []
    for key in [k for k in tensors if k.endswith(".keys")]:
        name = key[: -len(".keys")]
        w0 = tensors[f"{name}.w0"].float()
        out.append((f"{path.stem}:{name}", w0.shape[1], w0.shape[0], w0, tensors[key]))
    return out


def real_table(rows: list[dict[str, Any]]) -> str:
    """Per layer and norm: LoRA's floor at each budget and each GenLoRA method's best residual."""
    best: dict[tuple, float] = {}
    for r in rows:
        if r["residual"] is not None:
            key = (r["shape"], r["norm"], r["method"])
            best[key] = min(best.get(key, math.inf), r["residual"])
    names = list(dict.fromkeys(r["method"] for r in rows))
    budgets = sorted({r["budget"] for r in rows})
    floors = {(r["shape"], r["norm"], r["budget"]): r["floor"] for r in rows}
    out = ["| layer | norm | " + " | ".join(f"LoRA r={b} floor" for b in budgets) + " | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * (len(budgets) + len(names))]  # fmt: skip
    for shape, norm in dict.fromkeys((r["shape"], r["norm"]) for r in rows):
        cells = [f"{floors[(shape, norm, b)]:.3f}" for b in budgets]
        cells += [f"{best[(shape, norm, n)]:.3f}" if (shape, norm, n) in best else "-" for n in names]
        out.append(f"| {shape.split(':', 1)[1]} | {norm} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def better(row: dict[str, Any]) -> tuple[float, float]:
    """Sort key of a fit, best first: the residual; on a memory, the recall first."""
    return (-(row["recall"] or 0.0) if row["target"].startswith("memory") else 0.0, row["residual"])


def best_fits(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    """The best rate's row per (shape, target, method, seed); diverged fits (residual None) never win."""
    best: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        key = (row["shape"], row["target"], row["method"], row["seed"])
        if row["residual"] is not None and (key not in best or better(row) < better(best[key])):
            best[key] = row
    return best


def table(rows: list[dict[str, Any]]) -> str:
    """Best rate's residual per method and target (mean over seeds), beside LoRA's floor; on a memory
    target, the residual and the share of pairs recalled, beside LoRA's optimum of its budget."""
    best = best_fits(rows)
    shapes = sorted({k[0] for k in best})
    names = list(dict.fromkeys(r["method"] for r in rows))
    out = []
    for shape in shapes:
        targets = list(dict.fromkeys(r["target"] for r in rows if r["shape"] == shape))
        rates = len({r["lr"] for r in rows if r["shape"] == shape})
        out += [f"\n**{shape}** (relative residual at the best of {rates} rates; floor = LoRA's optimum at the "
                "budget's rank; memory: residual / share recalled, at the rate recalling most; mean over seeds)\n",
                "| method | params | budget | " + " | ".join(targets) + " |",
                "|---|---|---|" + "---|" * len(targets)]  # fmt: skip
        for name in names:
            cells, params, budget = [], None, None
            for t in targets:
                found = [v for k, v in best.items() if k[:3] == (shape, t, name)]
                if not found:
                    cells.append("-")
                    continue
                params, budget = found[0]["params"], found[0]["budget"]
                mean = statistics.fmean(f["residual"] for f in found)
                floor = statistics.fmean(f["floor"] for f in found)
                if t.startswith("memory"):
                    got = statistics.fmean(f["recall"] for f in found)
                    floor_recall = statistics.fmean(f["floor_recall"] for f in found)
                    cells.append(f"{mean:.3f} / {100 * got:.0f} % (floor {floor:.3f} / {100 * floor_recall:.0f} %)")
                else:
                    cells.append(f"{mean:.3f} (floor {floor:.3f})")
            if params is not None:
                out.append(f"| {name} | {params:,} | LoRA r={budget} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Residual (memory: share recalled) against trainable parameters, one panel per target (first shape,
    seed-mean of the best rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = rows[0]["shape"]
    targets = list(dict.fromkeys(r["target"] for r in rows if r["shape"] == shape))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.6), squeeze=False)
    best = best_fits(rows)
    for ax, t in zip(axes[0], targets, strict=True):
        memory = t.startswith("memory")
        found = {(k[2], k[3]): v for k, v in best.items() if k[:2] == (shape, t)}
        params = {name: v["params"] for (name, _), v in found.items()}
        families = (("LoRA", "o-"), ("DoRA", "s:"), ("GenLoRA signed", "^-"), ("GenLoRA bumps", "v--"),
                    ("GenLoRA mixed", "D-"))  # fmt: skip
        for family, style in families:
            names = sorted((n for n in params if n.startswith(family)), key=params.get)
            ys = [statistics.fmean(v["recall" if memory else "residual"] for (n, _), v in found.items() if n == name)
                  for name in names]  # fmt: skip
            if names:
                ax.plot([params[n] for n in names], ys, style, label=family)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap
        ax.set_ylim(-0.02, 1.05)
        ax.set_title(f"{t} ({shape})")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("share of pairs recalled (higher is better)" if memory else "relative residual (lower is better)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep(
    spec: dict[str, Any],
    w0: torch.Tensor,
    case: dict[str, torch.Tensor | None],
    where: dict[str, Any],
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    runs: Path,
) -> dict[str, Any] | None:
    """Fit ``spec`` at every rate of ``args``; each row (``where`` plus the fit) goes into ``rows`` and,
    at once, into the runs file. Returns the best row (None: every rate diverged)."""
    fits = []
    for lr in args.rates:
        fit = fit_one(spec, w0, case, lr, args.steps, args.batch)
        row = {**where, "method": spec["name"], "options": spec["options"], "budget": spec["budget"], "lr": lr,
               "steps": args.steps, "batch": args.batch, **fit}  # fmt: skip
        rows.append(row)
        with open(runs, "a") as f:
            f.write(json.dumps(row) + "\n")
        if row["residual"] is not None:  # None: the fit diverged
            fits.append(row)
    return min(fits, key=better, default=None)


def report(best: dict[str, Any] | None) -> str:
    """One fit's best rate, for the progress lines."""
    if best is None:
        return "diverged at every rate"
    if best["recall"] is None:
        return f"best {best['residual']:.3f}"
    return f"recalls {100 * best['recall']:.0f} % (residual {best['residual']:.3f}) at {best['lr']:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["576x576"], help="n x m of the layer (in x out)")
    parser.add_argument(
        "--targets",
        nargs="+",
        default=list(TARGETS[:3]),
        choices=TARGETS,
        help="default: the three matrices; memory: key -> value pairs (--pairs, --keys, --batch)",
    )
    parser.add_argument("--pairs", nargs="+", type=int, default=[64, 512], help="memory: key -> value pairs N")
    parser.add_argument("--keys", type=Path, help="memory: real keys, a file of quality.py's save_keys (each layer)")
    parser.add_argument("--batch", type=int, default=0, help="memory: pairs a step (0: all, full batch)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rates", nargs="+", type=float, default=list(RATES))
    parser.add_argument(
        "--methods", nargs="+", help="method name prefixes (default: all): 'LoRA r=1', 'GenLoRA signed'"
    )
    parser.add_argument("--updates", nargs="+", type=Path, help="real update files (quality.py save_updates)")
    parser.add_argument("--inputs", type=Path, help="the file with the inputs' moments (default: each update file)")
    parser.add_argument("--budgets", nargs="+", type=int, default=list(BUDGET_RANKS), help="LoRA ranks to match")
    parser.add_argument("--genlora-r", type=int, default=32, help="GenLoRA's rank (its group size follows the budget)")
    parser.add_argument(
        "--genlora-option", nargs="+", default=[], metavar="KEY=VALUE",
        help="GenLoRA options on top (YAML values), e.g. width_spread=1.0; a reading they do not fit is left out",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--results", type=Path, default=HERE / "results")
    args = parser.parse_args()
    if any(p <= 0 for p in args.pairs) or args.batch < 0:
        parser.error(f"--pairs {args.pairs} and --batch {args.batch} are not valid; give positive pair counts and a "
                     "batch of 0 (all pairs) or more.")  # fmt: skip
    for shape in args.shapes:
        parts = shape.split("x")
        if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
            parser.error(f"--shapes {shape!r} is not valid; write in x out, e.g. 576x1536.")
    extra = {}
    for item in args.genlora_option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--genlora-option {item!r} is not valid; write KEY=VALUE, e.g. width_spread=1.0.")
        extra[key] = yaml.safe_load(value)
    args.genlora_options = extra
    if extra:
        from genlora_pl.adapters.genlora import GenLoRAConfig

        known = [f.name for f in dataclasses.fields(GenLoRAConfig) if f.name not in ("r", "group_size", "reading")]
        unknown = [k for k in extra if k not in known]
        if unknown:
            parser.error(f"--genlora-option {unknown[0]!r} is not a GenLoRA option; choose from {', '.join(known)}.")
        from genlora_pl.adapters.genlora import READINGS

        errors = []
        for reading in READINGS:
            try:
                GenLoRAConfig(reading=reading, **extra)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        if len(errors) == len(READINGS):
            parser.error(f"--genlora-option {' '.join(args.genlora_option)!r} is not valid: {errors[0]}")
    torch.set_num_threads(args.threads)
    from genlora_pl.console import quiet

    quiet()
    args.results.mkdir(parents=True, exist_ok=True)
    runs = args.results / "fit_runs.jsonl"
    rows = []
    if args.updates:
        missing = [str(f) for f in [*args.updates, *([args.inputs] if args.inputs else [])] if not f.is_file()]
        if missing:
            parser.error(f"--updates/--inputs file {missing[0]!r} does not exist; make it with a save_updates "
                         "tuning entry of benchmarks/quality.yaml.")  # fmt: skip
        for case in real_cases(args.updates, args.inputs):
            target, w0 = case["target"], case["w0"]
            m, n = target.shape
            for spec in methods(m, n, args.methods, tuple(args.budgets), args.genlora_r, args.genlora_options):
                if spec["adapter"] != "genlora":
                    continue  # LoRA's optimum is its floor; DoRA's is not the point here
                floor = svd_floor(target, spec["budget"], case["root"])
                where = {"shape": case["label"], "norm": case["norm"], "seed": 0, "target": "real"}
                best = sweep(spec, w0, case, {**where, "floor": floor}, args, rows, runs)
                print(f"[{case['label']} {case['norm']}] {spec['name']}: {report(best)} "
                      f"(LoRA r={spec['budget']} floor {floor:.3f})", flush=True)  # fmt: skip
        print(real_table(rows))
        return
    layers = [(shape, *(int(p) for p in shape.split("x")), None, None) for shape in args.shapes]
    if args.keys:
        if not args.keys.is_file():
            parser.error(f"--keys file {str(args.keys)!r} does not exist; make it with a save_keys tuning entry of "
                         "benchmarks/quality.yaml.")  # fmt: skip
        layers = key_layers(args.keys)
        fewest = min(len(k) for *_, k in layers)
        if max(args.pairs) > fewest:
            parser.error(f"--pairs {max(args.pairs)} is more than the {fewest} keys of {str(args.keys)!r}; give at "
                         f"most {fewest}.")  # fmt: skip
    for shape, n, m, w0, keys in layers:
        if w0 is None:
            w0 = torch.randn(m, n, generator=torch.Generator().manual_seed(7)) / math.sqrt(n)  # a stand-in W0
        for seed in args.seeds:
            for kind in args.targets:
                if kind == "memory":
                    cases = [(f"memory {p}", make_memory(m, n, p, seed, keys)) for p in args.pairs]
                else:
                    cases = [(kind, {"target": make_target(kind, m, n, seed)})]
                for label, case in cases:
                    for spec in methods(m, n, args.methods, tuple(args.budgets), args.genlora_r, args.genlora_options):
                        where = {"shape": shape, "norm": "frobenius", "seed": seed, "target": label}
                        if kind == "memory":
                            where["floor"], where["floor_recall"] = memory_floor(case["keys"], case["values"],
                                                                                 spec["budget"])  # fmt: skip
                        else:
                            where["floor"] = svd_floor(case["target"], spec["budget"])
                        best = sweep(spec, w0, case, where, args, rows, runs)
                        print(f"[{shape} seed {seed} {label}] {spec['name']}: {report(best)} (floor "
                              f"{where['floor']:.3f})", flush=True)  # fmt: skip
    if not rows:
        parser.error(f"no method of --methods {args.methods} fits LoRA r={args.budgets}'s budgets on {args.shapes} "
                     "within 1.2x; give larger --budgets or a smaller --genlora-r.")  # fmt: skip
    print(table(rows))
    plot(rows, args.results / "fit.png")


if __name__ == "__main__":
    main()

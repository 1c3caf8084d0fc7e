"""Quality of GenLoRA against head-only training, LoRA and full fine-tuning on real offline tasks.

Every run is a real fit through genlora_pl (ClassificationModule, AdapterCallback, Lightning's
Trainer) on real pretrained weights and real data; the tasks, methods and learning rates are in
``benchmarks/quality.yaml``. Each finished run is appended to ``benchmarks/results/quality_runs.jsonl``
at once, so an interrupted sweep continues where it stopped; ``--summarize`` turns the runs into
``quality.csv`` (one row per run), ``quality_summary.json`` (mean and spread per method), a
markdown table and ``quality.png`` (test accuracy against trainable parameters).

    python benchmarks/quality.py --task tweets                  # 15 methods x 3 seeds
    python benchmarks/quality.py --stage tune                   # validation-only tuning sweep
    python benchmarks/quality.py --stage curve --task tweets    # learning curves of the final settings, seed 0
    python benchmarks/quality.py --task facts --no-curves       # final runs without in-fit validation (a fifth faster)
    python benchmarks/quality.py --summarize

Test accuracy is that of the model after the last epoch (no checkpoint picked on any split). The
tuning and curve stages never evaluate the test split. A task with ``curve_every`` validates every
so many steps inside fit and records the learning curve; the curve stage runs the final settings for
that alone (by default seed 0), for tasks whose final runs were recorded before they had curves;
``--no-curves`` skips the in-fit validations where the tuning runs already drew a task's curves.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import io
import json
import statistics
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RUNS = "quality_runs.jsonl"


def load_config(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def make_data(spec: dict[str, Any], backbone: str, order_seed: int | None = None) -> Any:
    """The task's data module; ``order_seed`` (a tuning setting) fixes the training order apart from the
    run's seed, which otherwise sets initialisation and order together."""
    module, _, name = spec["class_path"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return cls(**spec.get("init_args", {}), backbone=backbone, order_seed=order_seed)


def linear_weights(backbone: Any) -> dict[str, Any]:
    """Copies of the weights ``all-linear`` would adapt: the reference for full fine-tuning's update."""
    from genlora_pl.adapters import GenLoRAConfig
    from genlora_pl.injection import selected_layers

    names = selected_layers(backbone, GenLoRAConfig(target_modules="all-linear"))
    return {n: backbone.get_submodule(n).weight.detach().clone() for n in names}


def input_moments(module: Any, data: Any, names: list[str], batches: int = 8) -> dict[str, Any]:
    """``E[x x^T]`` of the inputs of each layer in ``names`` over ``batches`` training batches of the model
    as it is now (before fit: the pretrained model): what a loss sees of an update ``dW`` is
    ``tr(dW C dW^T)``, so ``benchmarks/fit.py`` fits real updates through it."""
    import torch

    sums: dict[str, Any] = {}
    counts: dict[str, int] = dict.fromkeys(names, 0)

    def hook(name: str):
        def record(layer: Any, args: tuple, output: Any) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + x.T @ x
            counts[name] += x.shape[0]

        return record

    handles = [module.backbone.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    data.setup("fit")
    modes = {m: m.training for m in module.modules()}  # fit starts from the modes it would have had
    module.eval()  # no dropout in the moments
    with torch.no_grad():
        for i, batch in enumerate(data.train_dataloader()):
            if i == batches:
                break
            module.model_step(batch)
    for m, training in modes.items():
        m.train(training)
    for h in handles:
        h.remove()
    return {n: (sums[n] / counts[n]).float() for n in names}


def answer_keys(module: Any, data: Any, names: list[str]) -> dict[str, Any]:
    """The inputs of each layer in ``names`` at every position that predicts an answer token (the next
    token is trained), over one epoch of the training rows, of the model as it is now (before fit: the
    pretrained model), with each layer's weight: real keys for ``benchmarks/fit.py``'s memory target."""
    import torch

    current: dict[str, Any] = {}
    keys: dict[str, list[Any]] = {n: [] for n in names}

    def hook(name: str):
        def record(layer: Any, args: tuple, output: Any) -> None:
            current[name] = args[0].detach()

        return record

    handles = [module.backbone.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    data.setup("fit")
    modes = {m: m.training for m in module.modules()}
    module.eval()
    with torch.no_grad():
        for batch in data.train_dataloader():
            module.model_step(batch)
            labels = batch["labels"]
            predicts = torch.zeros_like(labels, dtype=torch.bool)
            predicts[:, :-1] = labels[:, 1:] != -100  # position t predicts token t + 1
            for name in names:
                keys[name].append(current[name][predicts].float())
    for m, training in modes.items():
        m.train(training)
    for h in handles:
        h.remove()
    out = {f"{n}.keys": torch.cat(v).contiguous() for n, v in keys.items()}
    out |= {f"{n}.w0": module.backbone.get_submodule(n).weight.detach().float().contiguous() for n in names}
    return out


def save_updates(path: Path, backbone: Any, names: list[str], before: dict[str, Any], inputs: dict[str, Any]) -> None:
    """The fit's update ``W - W0`` (full fine-tuning) or ``s B A`` (an adapter) of each layer in ``names``,
    ``W0``, and (full fine-tuning) the inputs' second moment, as one safetensors file for fit.py."""
    from safetensors.torch import save_file

    from genlora_pl.adapters import AdapterLayer

    out = {}
    for name in names:
        layer = backbone.get_submodule(name)
        if isinstance(layer, AdapterLayer):
            out[f"{name}.delta"] = layer.delta_matrix().detach().float().contiguous()
            out[f"{name}.w0"] = layer.base_layer.weight.detach().float().contiguous()
        else:
            out[f"{name}.delta"] = (layer.weight.detach() - before[name]).float().contiguous()
            out[f"{name}.w0"] = before[name].float().contiguous()
        if name in inputs:
            out[f"{name}.inputs"] = inputs[name].contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))


def update_ranks(backbone: Any, before: dict[str, Any]) -> list[float]:
    """Entropy effective rank of ``W - W0`` of each layer in ``before`` (full fine-tuning)."""
    import torch

    from genlora_pl.spectra import effective_rank

    ranks = []
    for name, w0 in before.items():
        dw = (backbone.get_submodule(name).weight.detach() - w0).float().flatten(1)
        ranks.append(effective_rank(torch.linalg.svdvals(dw)))
    return ranks


def run_one(
    task: dict[str, Any],
    method: dict[str, Any],
    seed: int,
    cfg: dict[str, Any],
    stage: str,
    results: Path,
    curves: bool = True,
) -> dict[str, Any]:
    """One fit; returns the row written to the results file (curves=False: no validation inside fit)."""
    import lightning as L
    import torch

    from genlora_pl.adapters.registry import config_class
    from genlora_pl.callbacks import AdapterCallback
    from genlora_pl.schedules import Schedule, WarmupDecay
    from genlora_pl.spectra import adapter_spectra, parameter_report
    from genlora_pl.tasks import CausalLMModule, ClassificationModule

    L.seed_everything(seed, verbose=False)
    data = make_data(task["data"], task["backbone"], method.get("order_seed"))
    kind = method["kind"]
    adapted = kind in ("lora", "genlora", "dora")
    causal = task.get("task") == "causal_lm"
    metric = "exact_match" if causal else "acc"
    # lr: the adapters' rate (adapter_lr) for adapter methods, the only rate otherwise; head_lr: the
    # optimizer's own rate, which trains the head (by default the same as lr, as before parameter groups)
    lr, wd = float(method.get("lr") or 0.0), float(cfg["optimizer"].get("weight_decay", 0.0))
    head_lr = float(method.get("head_lr", lr))
    specific = {"max_new_tokens": task.get("max_new_tokens", 16)} if causal else {"num_classes": data.num_classes}
    module = (CausalLMModule if causal else ClassificationModule)(
        task["backbone"],
        **specific,
        optimizer=lambda params: torch.optim.AdamW(params, lr=head_lr, weight_decay=wd),
        lr_scheduler=lambda opt: WarmupDecay(opt, **cfg["scheduler"]),
        head_only=kind == "head",
        adapter_lr=lr if adapted else None,
        adapter_lr_multipliers=method.get("multipliers"),
        # BatchNorm statistics frozen at their pretrained values (norm_stats: frozen, per method in the
        # tuning record, or freeze_batchnorm for a whole task)
        freeze_batchnorm=method.get("norm_stats") == "frozen" or bool(task.get("freeze_batchnorm")),
    )
    callbacks: list[Any] = []
    if adapted:
        options = {k: method[k] for k in config_class(kind).options() if k in method}  # the method's own settings
        schedules = {k: Schedule(**method[k]) for k in ("gate", "temperature") if k in method}
        scale = {k: method[k] for k in ("alpha", "rslora", "dropout") if k in method}
        callbacks.append(AdapterCallback(method=kind, r=method["r"], seed=seed, options=options, **scale, **schedules))

    epochs = task.get("max_epochs", -1 if task.get("max_steps") else 1)  # a step budget: as many epochs as it takes
    # curve_every: validate every so many steps inside fit, for the learning curve; otherwise no
    # validation inside fit (validate() below gives the final score either way)
    every = task.get("curve_every") if curves else None
    curve = curve_recorder(f"val/{metric}")
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        max_steps=task.get("max_steps", -1),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None if every else 10**9,
        val_check_interval=every,
        limit_val_batches=None if every or not causal else 0,
        callbacks=[*callbacks, curve],
        default_root_dir=str(results / "lightning"),
    )
    before: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    if kind == "peft":  # a peer from PEFT itself (VeRA, FourierFT): its own injection, its defaults
        import peft

        module.configure_model()
        settings = dict(method["peft"])
        peft.get_peft_model(module.backbone, getattr(peft, settings.pop("type"))(**settings))  # in place
    if kind == "full":
        module.configure_model()
        before = linear_weights(module.backbone)
        # frozen (a tuning setting): parameter names, by substring, that full fine-tuning leaves at their
        # pretrained values, to tell where an update must sit from how large it must be (embed_tokens:
        # the token embeddings, which no adapter touches)
        frozen = [n for n, p in module.backbone.named_parameters() if any(f in n for f in method.get("frozen", []))]
        if method.get("frozen") and not frozen:
            raise ValueError(f"frozen={method['frozen']!r} names no parameter of {task['backbone']}.")
        for name in frozen:
            module.backbone.get_parameter(name).requires_grad_(False)
        if method.get("save_updates"):  # the inputs' second moments, at the pretrained model
            inputs = input_moments(module, data, method["save_updates"])
    if method.get("save_keys"):  # real keys for benchmarks/fit.py's memory target (a tuning setting: layer names)
        if not causal:
            raise ValueError(f"save_keys needs a causal-LM task (answer positions); {task['key']} is a classifier.")
        from safetensors.torch import save_file

        module.configure_model()
        path = results / "keys" / f"{task['key']}_seed{seed}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(answer_keys(module, data, method["save_keys"]), str(path))
    start = time.perf_counter()
    if kind != "untuned":  # the untuned model: evaluated as it comes
        trainer.fit(module, datamodule=data)
    fit_seconds = time.perf_counter() - start
    evaluate = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(results / "lightning"))  # fmt: skip
    if curve.points and curve.points[-1][0] == trainer.global_step:
        # fit has just validated the final model (greedy decoding: the same scores)
        scores = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    else:
        scores = evaluate.validate(module, datamodule=data, verbose=False)[0]
    val = scores[f"val/{metric}"]
    test = None
    if stage == "final":  # the tuning and curve stages never read the test split
        test = evaluate.test(module, datamodule=data, verbose=False)[0][f"test/{metric}"]
    if curve.points and curve.points[-1][0] != trainer.global_step:  # every curve ends at the final model
        curve.points.append([trainer.global_step, float(val)])
    backbone = module.backbone
    if adapted:
        ranks = [s.effective_rank for s in adapter_spectra(backbone).values()]
    elif kind == "full":
        ranks = update_ranks(backbone, before)
    else:
        ranks = []
    if method.get("save_updates"):  # real updates for benchmarks/fit.py (a tuning setting: layer names)
        file = f"{task['key']}_{method['name']}_seed{seed}".replace(" ", "_").replace("=", "")
        save_updates(results / "updates" / f"{file}.safetensors", backbone, method["save_updates"], before, inputs)
    trainable = 0 if kind == "untuned" else sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    adapter_params = parameter_report(backbone).adapter_params if adapted else trainable if kind == "peft" else 0
    return {
        "stage": stage,
        "task": task["key"],
        "method": method["name"],
        "kind": kind,
        "settings": {k: v for k, v in method.items() if k not in ("name", "kind")},
        "seed": seed,
        "trainable_params": trainable,
        "adapter_params": adapter_params,
        "val_acc": float(val),
        "test_acc": None if test is None else float(test),
        "mean_effective_rank": statistics.fmean(ranks) if ranks else None,
        "fit_seconds": round(fit_seconds, 1),
        "train_samples": len(data.splits["train"]),
        "eval_samples": len(data.splits["val"]),
        "test_samples": len(data.splits["test"]),
        "torch_threads": torch.get_num_threads(),
        "curve": curve.points,  # [[step, val score], ...] when the task has curve_every
        # the training loss over the last 20 steps (a task of under one epoch: on batches not yet seen
        # when the loss was taken), to tell a method that learns nothing from one that learns too little
        "train_loss_end": statistics.fmean(curve.losses[-20:]) if curve.losses else None,
        "train_losses": [round(x, 4) for x in curve.losses],  # every step's, for the loss against steps
        # a causal LM's teacher-forced share of right answer tokens on validation: partial learning that
        # an all-or-nothing exact match hides
        "val_token_acc": scores.get("val/token_acc"),
    }


def curve_recorder(metric: str) -> Any:
    """A callback that records ``[step, score]`` at every validation inside fit (the learning curve)
    and every step's training loss. (Defined here so that ``--summarize`` does not import Lightning.)"""
    import lightning as L

    class CurveRecorder(L.Callback):
        def __init__(self) -> None:
            self.points: list[list[float]] = []
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, *args: Any) -> None:
            self.losses.append(float(outputs["loss"]))

        def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
            # (on_validation_end: the epoch's metrics are in callback_metrics by then, not before)
            if not trainer.sanity_checking and metric in trainer.callback_metrics:
                self.points.append([trainer.global_step, float(trainer.callback_metrics[metric])])

    return CurveRecorder()


def score_name(task: dict[str, Any]) -> str:
    return "exact match" if task.get("task") == "causal_lm" else "acc"


def schedule(task: dict[str, Any]) -> str:
    return f"{task['max_steps']} steps" if task.get("max_steps") else f"{task['max_epochs']} epochs"


def run_key(row: dict[str, Any]) -> str:
    return json.dumps([row["stage"], row["task"], row["method"], row["settings"], row["seed"]], sort_keys=True)


def planned_key(stage: str, task: str, method: dict[str, Any], seed: int) -> str:
    settings = {k: v for k, v in method.items() if k not in ("name", "kind")}
    return run_key({"stage": stage, "task": task, "method": method["name"], "settings": settings, "seed": seed})


def read_runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_run(path: Path, row: dict[str, Any]) -> None:
    """One line per finished run, flushed and synced: a killed sweep keeps every finished run."""
    import os

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def planned(cfg: dict[str, Any], stage: str, tasks: list[str], methods: list[str] | None, seeds: list[int]):
    if stage == "tune":
        for tune in cfg["tuning"]:
            if tasks and tune["task"] not in tasks:
                continue
            for seed in [s for s in tune.get("seeds", [0]) if seeds is None or s in seeds]:
                for variant in tune["variants"]:
                    if "name" in variant:
                        entry = variant  # another method, named: a complete entry of its own
                    else:
                        name = tune["base"]["name"] + " " + ", ".join(f"{k}={v}" for k, v in variant.items())
                        entry = {**tune["base"], **variant, "name": name.strip()}
                    if methods is None or any(entry["name"] == m or entry["name"].startswith(f"{m} ") for m in methods):
                        yield tune["task"], entry, seed
        return
    for key in tasks:
        task = cfg["tasks"][key]
        overrides = task.get("lr", {})  # per-task learning rates by method name
        settings = task.get("settings", {})  # per-task settings by method name (head_lr, ...)
        for seed in seeds:  # seeds outermost: a partial sweep already covers every method once
            for method in cfg["methods"]:
                if task.get("methods") and method["name"] not in task["methods"]:
                    continue  # a task may run a subset of the methods (the long schedules do)
                if methods is None or method["name"] in methods:
                    lr = overrides.get(method["name"], method.get("lr"))
                    yield key, {**method, **settings.get(method["name"], {}), "lr": lr}, seed


def summarize(rows: list[dict[str, Any]], cfg: dict[str, Any], results: Path) -> str:
    """Write quality.csv, quality_summary.json, quality.png into ``results``; return markdown tables."""
    from genlora_pl.files import atomic_write_text

    results.mkdir(parents=True, exist_ok=True)
    fields = [
        "stage", "task", "method", "seed", "trainable_params", "adapter_params", "val_acc", "test_acc",
        "mean_effective_rank", "fit_seconds", "train_samples", "eval_samples", "settings",
    ]  # fmt: skip
    table = io.StringIO()
    writer = csv.DictWriter(table, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "settings": json.dumps(row["settings"], sort_keys=True)})
    atomic_write_text(results / "quality.csv", table.getvalue())  # an interrupted summary keeps the old one
    out: list[str] = []
    summary: dict[str, Any] = {}
    order = [m["name"] for m in cfg["methods"]]
    for key, task in cfg["tasks"].items():
        done = [r for r in rows if r["stage"] == "final" and r["task"] == key]
        if not done:
            continue
        groups: dict[str, list[dict[str, Any]]] = {}
        for r in done:
            groups.setdefault(r["method"], []).append(r)
        table = []
        for name in sorted(groups, key=in_order(order)):
            g = groups[name]
            tests = [r["test_acc"] for r in g]
            ranks = [r["mean_effective_rank"] for r in g if r["mean_effective_rank"] is not None]
            table.append(
                {
                    "method": name,
                    "seeds": len(g),
                    "trainable_params": g[0]["trainable_params"],
                    "test_acc_mean": statistics.fmean(tests),
                    "test_acc_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
                    "val_acc_mean": statistics.fmean(r["val_acc"] for r in g),
                    "effective_rank_mean": statistics.fmean(ranks) if ranks else None,
                    "fit_seconds_mean": statistics.fmean(r["fit_seconds"] for r in g),
                }
            )
        # Runs recorded before test_samples was: the cap, which every task's test split exceeds.
        n_test = done[-1].get("test_samples", task["data"]["init_args"].get("max_eval_samples"))
        sizes = {"train": done[0]["train_samples"], "val": done[0]["eval_samples"], "test": n_test}
        summary[key] = {"title": task["title"], "score": score_name(task), "samples": sizes, "methods": table}
        out += [
            f"\n**{task['title']}**: {sizes['train']:,} training, {sizes['val']:,} validation and {sizes['test']:,} "
            f"test examples, {schedule(task)}; test {score_name(task)}: mean ± standard deviation over seeds "
            "(one seed: its value alone).\n",
            f"| method | trainable params | test {score_name(task)} (%) | val {score_name(task)} (%) | "
            "effective rank of update | fit s | seeds |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in table:
            rank = "-" if t["effective_rank_mean"] is None else f"{t['effective_rank_mean']:.1f}"
            spread = f" ± {100 * t['test_acc_std']:.1f}" if t["seeds"] > 1 else ""  # one run has no spread
            out.append(
                f"| {t['method']} | {t['trainable_params']:,} | {100 * t['test_acc_mean']:.1f}{spread} | "
                f"{100 * t['val_acc_mean']:.1f} | {rank} | {t['fit_seconds_mean']:.0f} | {t['seeds']} |"
            )
    tuned = [r for r in rows if r["stage"] == "tune"]
    if tuned:
        out += ["\n**Tuning sweep** (validation split only; mean over the seeds run, in the order run)\n",
                "| task | run | lr | val acc or exact match (%) | seeds | effective rank |",
                "|---|---|---|---|---|---|"]  # fmt: skip
        groups: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
        for r in tuned:
            groups.setdefault((r["task"], r["method"], r["settings"].get("lr")), []).append(r)  # untuned: none
        for (task, method, lr), runs in groups.items():
            ranks = [r["mean_effective_rank"] for r in runs if r["mean_effective_rank"] is not None]
            rank = f"{sum(ranks) / len(ranks):.1f}" if ranks else "-"
            val = 100 * sum(r["val_acc"] for r in runs) / len(runs)  # exact match on causal tasks
            out.append(f"| {task} | {method} | {'-' if lr is None else f'{lr:g}'} | {val:.1f} | {len(runs)} | {rank} |")
    atomic_write_text(results / "quality_summary.json", json.dumps(summary, indent=1) + "\n")
    if summary:
        plot(summary, results)
    for key, task in cfg["tasks"].items():
        plot_curves(key, task, [r for r in rows if r["task"] == key], order, results)
    return "\n".join(out)


def in_order(order: list[str]) -> Any:
    """Sort key of method names: their place in ``order`` (the config's methods), others after."""
    return lambda name: order.index(name) if name in order else len(order)


def curve_stage(rows: list[dict[str, Any]]) -> str | None:
    """The stage whose runs draw the learning curves: final, else curve, else tune (the first with any)."""
    return next((s for s in ("final", "curve", "tune") if any(r["stage"] == s and r.get("curve") for r in rows)), None)


def curves_of(
    rows: list[dict[str, Any]], order: list[str], stage: str | None
) -> dict[str, list[tuple[float, float, float, float]]]:
    """``{label: [(step, mean, low, high), ...]}``: the validation curves by method (mean, lowest and
    highest over seeds) of the runs of ``stage`` (``curve_stage``'s pick), by method and rate for
    tuning runs. Every curve starts at the untuned model's score where it was run; methods in the
    tables' ``order``. Methods whose final runs recorded no curve (``--no-curves``) are drawn from
    their curve-stage runs, labelled with the seed."""
    place = in_order(order)
    chosen = [r for r in rows if r["stage"] == stage]
    if stage == "final":
        drawn = {r["method"] for r in chosen if r.get("curve")}
        chosen += [r for r in rows if r["stage"] == "curve" and r.get("curve") and r["method"] not in drawn]
    chosen.sort(key=lambda r: place(r["method"]))
    start = next((r["val_acc"] for r in rows if r["kind"] == "untuned"), None)
    groups: dict[str, list[list[list[float]]]] = {}
    for r in chosen:
        if r.get("curve"):
            n = r["trainable_params"]
            size = f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n / 1e3:.0f} K"
            rate = f", lr {r['settings']['lr']:g}" if stage == "tune" else ""  # tuning: one line per rate
            seed = f", seed {r['seed']}" if r["stage"] != stage else ""
            label = f"{r['method']} ({size}{rate}{seed})"
            groups.setdefault(label, []).append(r["curve"])
    out = {}
    for label, curves in groups.items():
        steps = sorted({p[0] for c in curves for p in c})
        points = [(0.0, start, start, start)] if start is not None else []
        for step in steps:
            values = [p[1] for c in curves for p in c if p[0] == step]
            points.append((step, statistics.fmean(values), min(values), max(values)))
        out[label] = points
    return out


def plot_curves(key: str, task: dict[str, Any], rows: list[dict[str, Any]], order: list[str], results: Path) -> None:
    """``curves_<task>.png``: validation score against steps, one line per method (the band: the
    seeds' range)."""
    stage = curve_stage(rows)
    curves = curves_of(rows, order, stage)
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    from genlora_pl.files import atomic_write

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        steps, mean, low, high = zip(*points, strict=True)
        (line,) = ax.plot(steps, [100 * v for v in mean], marker="o", markersize=3, label=label)
        if len(set(low) | set(high)) > 1:
            ax.fill_between(steps, [100 * v for v in low], [100 * v for v in high], color=line.get_color(), alpha=0.15)
    ax.set_xlabel("training step")
    ax.set_ylabel(f"validation {score_name(task)} (%)")
    seeds = sorted({r["seed"] for r in rows if r["stage"] == stage and r.get("curve")})
    runs = {"final": "final runs", "curve": "final settings", "tune": "tuning runs"}[stage or "final"]
    title = f"{task['title']} ({runs}, seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
    ax.set_title(textwrap.fill(title, 80), fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    atomic_write(results / f"curves_{key}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def plot(summary: dict[str, Any], results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import textwrap

    import matplotlib.pyplot as plt

    cols = min(3, len(summary))  # a grid, so that nine tasks stay readable
    rows = -(-len(summary) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.2 * rows), squeeze=False)
    for ax in axes.flat[len(summary) :]:
        ax.axis("off")
    styles = {"head": ("k", "s"), "LoRA": ("tab:blue", "o"), "GenLoRA": ("tab:red", "^"), "full": ("tab:gray", "D")}
    for ax, task in zip(axes.flat, summary.values(), strict=False):
        for t in task["methods"]:
            if t["trainable_params"] == 0:  # the untuned model: a reference line, it has no place on a log axis
                ax.axhline(100 * t["test_acc_mean"], color="k", linestyle=":", linewidth=1)
                ax.annotate(t["method"], (0.01, 100 * t["test_acc_mean"]), xycoords=("axes fraction", "data"),
                            fontsize=6, xytext=(0, 3), textcoords="offset points")  # fmt: skip
                continue
            family = next((f for f in styles if t["method"].startswith(f)), "full")
            color, marker = styles[family]
            ax.errorbar(
                t["trainable_params"], 100 * t["test_acc_mean"], yerr=100 * t["test_acc_std"],
                color=color, marker=marker, capsize=3, linestyle="none",
            )  # fmt: skip
            ax.annotate(t["method"].replace("GenLoRA ", "").replace("LoRA ", ""), (t["trainable_params"],
                        100 * t["test_acc_mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel(f"test {'accuracy' if task['score'] == 'acc' else task['score']} (%)")
        ax.set_title(textwrap.fill(task["title"], 70), fontsize=8)
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=c, marker=m, linestyle="none", label=f) for f, (c, m) in styles.items()]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=8)
    fig.tight_layout(rect=(0, 0.06 / rows, 1, 1))
    from genlora_pl.files import atomic_write

    atomic_write(results / "quality.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=HERE / "quality.yaml")
    parser.add_argument(
        "--stage", choices=["final", "tune", "curve"], default="final",
        help="final: every method x seed, test read once; tune: the validation sweep; curve: the final "
        "settings' learning curves only (seed 0 unless --seeds)",
    )  # fmt: skip
    parser.add_argument("--task", nargs="+", help="task keys of the config (default: all)")
    parser.add_argument(
        "--methods", nargs="+", help="method names of the config (default: all); in tuning, their variants too"
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="default: the config's seeds")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--results", type=Path, default=HERE / "results", help="folder of runs, tables and plot")
    parser.add_argument("--summarize", action="store_true", help="only write tables and plot from saved runs")
    parser.add_argument(
        "--no-curves", dest="curves", action="store_false",
        help="no validation inside fit (about a fifth of a causal-LM run): final runs of a task whose tuning "
        "runs already drew its curves",
    )  # fmt: skip
    args = parser.parse_args()
    cfg = load_config(args.config)
    tasks = args.task or list(cfg["tasks"])
    unknown = [t for t in tasks if t not in cfg["tasks"]]
    if unknown:
        parser.error(f"--task {unknown[0]!r} is not in {args.config}; choose from {', '.join(cfg['tasks'])}.")
    flat = [t for t in tasks if not cfg["tasks"][t].get("curve_every")]
    if args.stage == "curve" and flat and not args.summarize:
        parser.error(f"--stage curve: task {flat[0]!r} has no curve_every in {args.config}; give it one first.")
    if not args.summarize:
        import torch

        from genlora_pl.console import quiet

        quiet()
        if args.threads:
            torch.set_num_threads(args.threads)
        done = {run_key(r) for r in read_runs(args.results / RUNS)}
        seeds = args.seeds or {"final": cfg["seeds"], "curve": [0]}.get(args.stage)
        for key, method, seed in planned(cfg, args.stage, tasks, args.methods, seeds):
            if planned_key(args.stage, key, method, seed) in done:
                continue
            if args.stage == "curve" and method["kind"] == "untuned":
                continue  # no fit, no curve (the curves start at the final runs' untuned score)
            task = {**cfg["tasks"][key], "key": key}
            row = run_one(task, method, seed, cfg, args.stage, args.results, curves=args.curves)
            append_run(args.results / RUNS, row)
            acc = "" if row["test_acc"] is None else f" test {row['test_acc']:.4f}"
            rank = row["mean_effective_rank"]
            print(
                f"[{key}] {row['method']} seed {seed}: val {row['val_acc']:.4f}{acc}, "
                f"{row['trainable_params']:,} params, rank {'-' if rank is None else f'{rank:.2f}'}, "
                f"{row['fit_seconds']:.0f} s",
                flush=True,
            )
    # Tables hold the runs of the current config; runs of settings since changed stay in the runs file.
    every = list(cfg["tasks"])
    current = {planned_key(s, *p) for s in ("final", "curve") for p in planned(cfg, s, every, None, cfg["seeds"])}
    current |= {planned_key("tune", *p) for p in planned(cfg, "tune", every, None, None)}
    latest = {run_key(r): r for r in read_runs(args.results / RUNS)}  # a run repeated: its last result
    rows = [r for k, r in latest.items() if k in current]
    print(summarize(rows, cfg, args.results))


if __name__ == "__main__":
    main()

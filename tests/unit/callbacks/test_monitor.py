"""AdapterMonitor's reductions: summary scalars for every logger, per-layer figures kept apart."""

from __future__ import annotations

import torch

from conftest import make_vit, perturb
from genlora_pl import GenLoRAConfig, LoRAConfig, inject_adapters
from genlora_pl.callbacks import AdapterMonitor
from genlora_pl.callbacks.monitor import layer_scalars, summary_scalars
from genlora_pl.injection import adapter_layers


def test_summary_reduces_as_the_method_declares_and_per_layer_stays_apart():
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=["qkv", "fc1"]))
    perturb(model)
    record = AdapterMonitor.measure(model, step=3)
    summary = summary_scalars(record, adapter_layers(model))
    ranks = [layer["effective_rank"] for layer in record["layers"].values()]
    assert summary["adapter/effective_rank/mean"] == sum(ranks) / len(ranks)
    closest = [d["A"]["center_min_distance"] for d in record["diagnostics"].values()]
    assert summary["adapter/center_min_distance_A/min"] == min(closest)
    assert not [k for k in summary if "blocks." in k]
    per_layer = layer_scalars(record)
    assert "adapter/effective_rank/blocks.0.attn.qkv" in per_layer
    assert "adapter/center_drift_mean_B/blocks.1.mlp.fc1" in per_layer


def test_lora_has_spectra_but_no_diagnostics():
    model = make_vit()
    inject_adapters(model, LoRAConfig(r=2, target_modules=["qkv"]))
    record = AdapterMonitor.measure(model, step=0)
    assert record["diagnostics"] == {} and set(record["layers"]) == {"blocks.0.attn.qkv", "blocks.1.attn.qkv"}
    summary = summary_scalars(record, adapter_layers(model))
    assert set(summary) == {
        f"adapter/{k}/mean"
        for k in ("effective_rank", "stable_rank", "energy_rank", "top_singular_value", "relative_norm")
    }
    assert torch.isfinite(torch.tensor(list(summary.values()))).all()


class _Task(torch.nn.Module):
    """What the monitor reads of a task: its backbone and its chance level."""

    def __init__(self, backbone: torch.nn.Module, classes: int) -> None:
        super().__init__()
        self.backbone, self.classes = backbone, classes

    def chance_level(self) -> dict[str, float]:
        import math

        return {"val/acc_balanced": 1 / self.classes, "val/loss": math.log(self.classes)}


def test_the_summary_warns_at_chance_and_when_twins_pile_up():
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=8, target_modules=["qkv", "fc1"]))
    monitor = AdapterMonitor()
    monitor.history = [AdapterMonitor.measure(model, step=0)]
    task = _Task(model, classes=5)
    at_chance = {"best": {"val/acc_balanced": 0.2, "val/loss": 1.59}, "parameters": {"trainable": 1, "total": 2}}
    said = monitor.warnings(task, at_chance)
    assert len(said) == 1 and said[0].startswith("validation stayed at chance: best val/acc_balanced 0.2000")
    assert monitor.warnings(task, {"best": {"val/acc_balanced": 0.6, "val/loss": 1.0}}) == []

    import copy

    record = copy.deepcopy(monitor.history[0])
    record["step"] = 50
    for layer in record["diagnostics"].values():  # every layer: 3 of 8 basis vectors with a twin
        layer["A"]["center_twins"] = 0.375
    monitor.history.append(record)
    start = summary_scalars(monitor.history[0], adapter_layers(model))["adapter/center_twins_A/mean"]
    said = monitor.warnings(task, {"best": {}})
    assert said == [
        "alarm: over 10 % of the basis vectors have a twin (< 0.1 widths apart): "
        f"adapter/center_twins_A/mean is 0.375 at step 50, {start:.3f} at step 0 (it grew in training)"
    ]
    assert "  warning: alarm: over 10 %" in AdapterMonitor.summary({**at_chance, "warnings": said, "run_dir": "x"})

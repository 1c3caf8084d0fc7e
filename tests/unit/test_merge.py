"""PEFT-style behaviour tests on real timm and transformers architectures."""

import pytest
import torch

from conftest import MODELS, output, perturb
from genlora_pl import (
    GenLoRAConfig,
    LoRAConfig,
    inject_adapters,
    merge_adapters,
    merge_and_unload,
    unmerge_adapters,
)
from genlora_pl.injection import adapter_layers

CASES = [(model, cfg) for model in MODELS for cfg in ("genlora", "lora")]


def build(model_name, adapter, **kw):
    factory, targets, make_input, head = MODELS[model_name]
    model = factory()
    cls = GenLoRAConfig if adapter == "genlora" else LoRAConfig
    cfg = cls(r=4, target_modules=targets, modules_to_save=[head], **kw)
    return model, cfg, make_input()


@pytest.mark.parametrize(("model_name", "adapter"), CASES)
def test_output_unchanged_right_after_injection(model_name, adapter):
    model, cfg, x = build(model_name, adapter)
    with torch.no_grad():
        before = output(model, x)
        inject_adapters(model, cfg)
        after = output(model, x)
    assert torch.equal(before, after)


@pytest.mark.parametrize(("model_name", "adapter"), CASES)
def test_merged_equals_unmerged_equals_unloaded(model_name, adapter):
    model, cfg, x = build(model_name, adapter)
    with torch.no_grad():
        base = output(model, x)
        inject_adapters(model, cfg)
        perturb(model)
        unmerged = output(model, x)
        assert not torch.allclose(unmerged, base, atol=1e-3)  # the adapter really does something
        weights = {n: l.base_layer.weight.clone() for n, l in adapter_layers(model).items()}
        deltas = {n: l.delta_weight() for n, l in adapter_layers(model).items()}
        merge_adapters(model)
        for name, layer in adapter_layers(model).items():
            torch.testing.assert_close(layer.base_layer.weight, weights[name] + deltas[name], rtol=1e-6, atol=1e-6)
        merged = output(model, x)
        torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
        unmerge_adapters(model)
        for name, layer in adapter_layers(model).items():
            torch.testing.assert_close(layer.base_layer.weight, weights[name], rtol=0, atol=1e-6)
        torch.testing.assert_close(output(model, x), unmerged, rtol=1e-5, atol=1e-5)
        plain = merge_and_unload(model)
        assert not adapter_layers(plain)
        torch.testing.assert_close(output(plain, x), unmerged, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("model_name", "adapter"), CASES)
def test_one_step_changes_only_adapters_and_head_and_all_get_gradients(model_name, adapter):
    model, cfg, x = build(model_name, adapter)
    inject_adapters(model, cfg)
    perturb(model)
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.1)
    output(model, x).pow(2).mean().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"
    opt.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(p.detach(), before[name])
        assert changed == p.requires_grad, name
    saved_head = MODELS[model_name][3]
    assert all(
        ("base_layer" not in n) and (n.startswith(saved_head + ".") or ".base_layer." not in n)
        for n, p in model.named_parameters()
        if p.requires_grad
    )


def test_merge_refuses_non_finite_and_leaves_weights_untouched():
    model, cfg, x = build("vit", "genlora")
    inject_adapters(model, cfg)
    perturb(model)
    layers = list(adapter_layers(model).values())
    with torch.no_grad():
        layers[-1].amps_B[0] = float("nan")
    weights = [layer.base_layer.weight.clone() for layer in layers]
    with pytest.raises(ValueError, match="refusing to merge adapter 'blocks.1.mlp.fc2'"):
        merge_adapters(model)
    assert all(torch.equal(layer.base_layer.weight, w) for layer, w in zip(layers, weights, strict=True))
    assert not any(layer.merged for layer in layers)


def test_merging_twice_is_an_error():
    model, cfg, _ = build("vit", "lora")
    inject_adapters(model, cfg)
    layer = next(iter(adapter_layers(model).values()))
    layer.merge()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()


def test_merged_inference_calls_only_the_base_layer(monkeypatch):
    model, cfg, x = build("vit", "genlora")
    inject_adapters(model, cfg)
    merge_adapters(model)
    for layer in adapter_layers(model).values():
        monkeypatch.setattr(layer, "factors", lambda: (_ for _ in ()).throw(AssertionError("generated")))
    output(model, x)


def test_merge_in_bf16_base_weight():
    model, cfg, x = build("vit", "genlora")
    model.to(torch.bfloat16)
    inject_adapters(model, cfg)
    perturb(model)
    layer = next(iter(adapter_layers(model).values()))
    w0 = layer.base_layer.weight.clone()
    expected = (w0.float() + layer.delta_weight()).to(torch.bfloat16)
    merge_adapters(model)
    assert layer.base_layer.weight.dtype == torch.bfloat16
    assert torch.equal(layer.base_layer.weight, expected)
    with torch.no_grad():
        y = output(model, x.to(torch.bfloat16))
    assert torch.isfinite(y).all()

"""GenLoRA's fast path: shape groups generate every layer's factors in a few batched kernels, with
a hand-written backward, and nothing a user sees (values, gradients, files) changes.

Generated factors and their gradients must equal the reference generator to 1e-6 (relative); the
outputs of a whole network, where those roundings pass through every block, to 1e-5."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import make_vit, output, perturb
from genlora_pl import (
    GenLoRAConfig,
    LoRAConfig,
    adapter_state_dict,
    inject_adapters,
    load_adapter_state_dict,
    merge_and_unload,
)
from genlora_pl.adapters import GenLoRALayer
from genlora_pl.adapters import genlora as genlora_module
from genlora_pl.adapters.genlora import GENERATOR, KERNELS, generate, generate_batched
from genlora_pl.injection import adapter_layers

TARGETS = ["qkv", "proj", "fc1", "fc2"]


def close(actual: torch.Tensor, expected: torch.Tensor, msg: str = "", rtol: float = 1e-6) -> None:
    """Equal to fp32 rounding: a relative error of at most ``rtol``, measured on the whole tensor
    (||actual - expected|| <= rtol ||expected||); element by element it would be meaningless where a
    gradient is a difference of nearly equal terms (a centre sitting on a latent point)."""
    assert actual.shape == expected.shape, (msg, actual.shape, expected.shape)
    error = float((actual.double() - expected.double()).norm())
    assert error <= rtol * float(expected.double().norm()) + 1e-30, (
        f"{msg}: relative error {error / float(expected.double().norm()):.2e}"
    )


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("g", [1, 2, 4])
def test_batched_generation_equals_the_reference_in_values_and_gradients(kernel, g):
    torch.manual_seed(g)
    L, p, r = 3, 37, 8
    points = torch.randn(L, p, g, dtype=torch.float64).float().requires_grad_()
    centers = (points.detach()[:, :r] + 0.05 * torch.randn(L, r, g)).requires_grad_()
    log_widths = (0.3 * torch.randn(L, r)).requires_grad_()
    amps = torch.randn(L, r).requires_grad_()
    temperature = torch.tensor([1.0, 1.7, 0.6])
    weight = torch.randn(L, r, p)  # a non-trivial upstream gradient

    batched = generate_batched(points, centers, log_widths, amps, temperature, kernel)
    (batched * weight).sum().backward()
    grads = [t.grad.clone() for t in (points, centers, log_widths, amps)]
    for t in (points, centers, log_widths, amps):
        t.grad = None
    reference = torch.stack(
        [generate(points[i], centers[i], log_widths[i], amps[i], temperature[i], kernel) for i in range(L)]
    )
    (reference * weight).sum().backward()
    close(batched.detach(), reference.detach(), "values")
    for name, got, t in zip(
        ("points", "centers", "log_widths", "amps"), grads, (points, centers, log_widths, amps), strict=True
    ):
        close(got, t.grad, name)


def grouped_and_separate(config: GenLoRAConfig) -> tuple[nn.Module, nn.Module]:
    """The same model with its layers grouped (as injected) and with every layer on its own."""
    torch.manual_seed(0)
    grouped = make_vit()
    inject_adapters(grouped, config)
    perturb(grouped)
    separate = copy.deepcopy(grouped)
    GenLoRALayer.detach(separate)  # every layer owns its tensors again: the per-layer path
    assert not hasattr(separate, "genlora_groups")
    return grouped, separate


@pytest.mark.parametrize(("rslora", "reading"), [(False, "bumps"), (True, "bumps"), (False, "signed")])
def test_a_grouped_model_computes_what_its_layers_compute_alone(rslora, reading):
    grouped, separate = grouped_and_separate(
        GenLoRAConfig(r=8, target_modules=TARGETS, rslora=rslora, reading=reading, group_size=2)
    )
    with torch.no_grad():
        for layer in adapter_layers(grouped).values():
            layer.gate.fill_(0.7)
            layer.temperature.fill_(1.3)
        for layer in adapter_layers(separate).values():
            layer.gate.fill_(0.7)
            layer.temperature.fill_(1.3)
    x = torch.randn(2, 3, 32, 32)
    out_g, out_s = output(grouped, x), output(separate, x)
    close(out_g, out_s, rtol=1e-5)
    (out_g * out_s.detach()).sum().backward()
    (out_s * out_s.detach()).sum().backward()
    for group in grouped.genlora_groups.values():
        for index, path in enumerate(group.paths):
            layer = separate.get_submodule(path)
            for name in GENERATOR:
                close(group._parameters[name].grad[index], layer._parameters[name].grad, f"{path}.{name}")


def test_one_generation_per_forward_whatever_the_number_of_layers(monkeypatch):
    calls = []
    original = genlora_module.generate_batched
    monkeypatch.setattr(genlora_module, "generate_batched", lambda *a: calls.append(a[0].shape[0]) or original(*a))
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=TARGETS))
    groups = len(model.genlora_groups)
    calls.clear()
    output(model, torch.randn(2, 3, 32, 32)).sum().backward()
    assert len(calls) == 2 * groups  # one batched call per side and shape group, for 9 layers
    assert sum(calls) == 2 * len(adapter_layers(model))


class Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def ops_per_step(config, depth: int) -> int:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8,
                              depth=depth)  # fmt: skip
    inject_adapters(model, config)
    x = torch.randn(2, 3, 32, 32)
    output(model, x).sum().backward()  # warm up
    with Counter() as counter:
        output(model, x).sum().backward()
    return counter.ops


def test_generator_ops_do_not_grow_with_the_number_of_layers():
    genlora, lora = (
        GenLoRAConfig(r=8, target_modules=["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]),
        LoRAConfig(r=8, target_modules=["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"]),
    )
    extra = [ops_per_step(genlora, depth) - ops_per_step(lora, depth) for depth in (2, 6)]
    # 16 more adapted layers, the same 4 shape groups: GenLoRA's extra ops stay put (LoRA's per-layer
    # scaling ops even make the difference shrink)
    assert extra[1] <= extra[0], extra


def test_the_optimizer_sees_eight_tensors_per_shape_group():
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=TARGETS))
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 8 * len(model.genlora_groups) == 8 * 4  # qkv, proj (x2 shapes), fc1, fc2
    assert len(adapter_layers(model)) == 9


@pytest.mark.parametrize("reading", ["bumps", "signed"])
def test_files_keep_per_layer_names_and_round_trip(reading):
    config = GenLoRAConfig(r=8, target_modules=TARGETS, modules_to_save=["head"], reading=reading)
    grouped, separate = grouped_and_separate(config)
    state = adapter_state_dict(grouped)
    assert state.keys() == adapter_state_dict(separate).keys()
    assert "blocks.1.mlp.fc2.latent_A" in state and not any("genlora_groups" in k for k in state)
    for key, value in adapter_state_dict(separate).items():
        assert torch.equal(state[key], value), (key, state[key], value)
    torch.manual_seed(0)  # the same base weights as grouped_and_separate's
    fresh = make_vit()
    inject_adapters(fresh, config)
    load_adapter_state_dict(fresh, state)
    x = torch.randn(2, 3, 32, 32)
    close(output(fresh, x), output(grouped, x), rtol=1e-5)
    # a plain load_state_dict of the whole model goes through the same per-layer names
    torch.manual_seed(0)
    other = make_vit()
    inject_adapters(other, config)
    other.load_state_dict(grouped.state_dict())
    close(output(other, x), output(grouped, x), rtol=1e-5)


@pytest.mark.parametrize("reading", ["bumps", "signed"])
def test_seeded_initial_values_are_unchanged_by_grouping(reading):
    config = GenLoRAConfig(r=8, target_modules=TARGETS, seed=3, reading=reading)
    model = make_vit()
    inject_adapters(model, config)
    for path, layer in adapter_layers(model).items():
        alone = GenLoRALayer(nn.Linear(layer.in_features, layer.out_features), config, path)
        for name in GENERATOR:
            assert torch.equal(getattr(layer, name), alone._parameters[name]), (path, name)


def test_no_stale_slices_after_changes_between_forwards():
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=TARGETS))
    perturb(model)
    x = torch.randn(2, 3, 32, 32)
    output(model, x)  # fills the cache
    with torch.no_grad():
        model.genlora_groups.g0.amps_B.mul_(3.0)  # an optimizer step, say
    block = model.blocks[0]
    tokens = model.patch_embed(x)
    got = block(tokens)  # a submodule called directly: the root's hook did not run
    separate = copy.deepcopy(model)
    GenLoRALayer.detach(separate)
    close(got, separate.blocks[0](separate.patch_embed(x)), rtol=1e-5)
    # merging and unloading takes the groups and their hooks out with the layers
    merged = merge_and_unload(copy.deepcopy(model))
    assert not hasattr(merged, "genlora_groups") and not merged._forward_pre_hooks
    close(output(merged, x), output(model, x), rtol=1e-5)


def test_activation_checkpointing_gives_the_same_gradients():
    grouped, _ = grouped_and_separate(GenLoRAConfig(r=8, target_modules=TARGETS))
    checkpointed = copy.deepcopy(grouped)
    checkpointed.set_grad_checkpointing(True)
    x = torch.randn(2, 3, 32, 32)
    for model in (grouped, checkpointed):
        model.train()
        output(model, x).pow(2).sum().backward()
    for key, group in grouped.genlora_groups.items():
        for name in GENERATOR:
            close(checkpointed.genlora_groups[key]._parameters[name].grad, group._parameters[name].grad, name)


def test_bf16_autocast_generates_in_fp32_and_applies_in_bf16(monkeypatch):
    seen = []
    original = genlora_module.generate_batched
    monkeypatch.setattr(genlora_module, "generate_batched", lambda *a: seen.append(original(*a)) or seen[-1])
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=TARGETS))
    perturb(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = output(model, x)
    assert seen and all(t.dtype == torch.float32 for t in seen)
    a, b = model.genlora_groups.g0.for_forward(0)
    assert a.dtype == b.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), output(model, x), rtol=5e-2, atol=5e-2)


@pytest.mark.slow
def test_torch_compile_of_a_grouped_model_matches_eager():
    grouped, _ = grouped_and_separate(GenLoRAConfig(r=8, target_modules=TARGETS))
    compiled = torch.compile(copy.deepcopy(grouped))
    x = torch.randn(2, 3, 32, 32)
    eager_out = output(grouped, x)
    compiled_out = output(compiled, x)
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-5)
    eager_out.sum().backward()
    compiled_out.sum().backward()
    for key, group in grouped.genlora_groups.items():
        other = compiled._orig_mod.genlora_groups[key]
        for name in GENERATOR:
            torch.testing.assert_close(other._parameters[name].grad, group._parameters[name].grad, rtol=1e-4, atol=1e-5)


def test_changing_the_adapters_after_injection_works_or_says_what_to_do(tmp_path):
    from genlora_pl import load_adapter, save_adapter

    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=["qkv"]))
    assert inject_adapters(model, GenLoRAConfig(r=4, target_modules=["qkv"])) == [
        "blocks.0.attn.qkv",
        "blocks.1.attn.qkv",
    ]
    assert len(model.genlora_groups) == 1  # the same config again: nothing new, no second group
    for other in (LoRAConfig(r=2, target_modules=["fc1"]), GenLoRAConfig(r=8, target_modules=["qkv"])):
        with pytest.raises(ValueError, match="call merge_and_unload\\(\\) before injecting a different config"):
            inject_adapters(model, other)  # a LoRA beside GenLoRA groups, or other ranks: one config per model
    save_adapter(model, tmp_path / "qkv")
    x = torch.randn(2, 3, 32, 32)
    merge_and_unload(model)
    assert not adapter_layers(model) and not hasattr(model, "genlora_groups")
    inject_adapters(model, GenLoRAConfig(r=2, target_modules=["fc1", "fc2"]))  # a new set after unloading
    assert sorted(model.genlora_groups) == ["g0", "g1"] and len(adapter_layers(model)) == 4
    output(model, x).sum().backward()
    fresh = make_vit()
    inject_adapters(fresh, GenLoRAConfig(r=4, target_modules=["fc1"]))
    with pytest.raises(ValueError, match="saved with other adapter settings"):
        load_adapter(fresh, tmp_path / "qkv")  # another target set: refused, nothing half-loaded
    # a layer wrapped by hand after injection is not in a group: it generates its own factors
    extra = GenLoRALayer(model.blocks[0].attn.proj, GenLoRAConfig(r=2), "blocks.0.attn.proj")
    model.blocks[0].attn.proj = extra
    with torch.no_grad():
        extra.amps_B.fill_(0.1)
    assert extra.group is None and torch.isfinite(output(model, x)).all()


def test_without_autograd_the_factors_are_generated_once_until_something_changes(monkeypatch):
    calls = []
    original = genlora_module.generate_batched
    monkeypatch.setattr(genlora_module, "generate_batched", lambda *a: calls.append(1) or original(*a))
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=TARGETS))
    groups, x = len(model.genlora_groups), torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for _ in range(5):  # as generating text calls the model once per token
            output(model, x)
        assert len(calls) == 2 * groups
        model.genlora_groups.g0.amps_B.add_(0.1)
        changed = output(model, x)
        assert len(calls) == 2 * groups + 2  # only the group that changed generates again
    separate = copy.deepcopy(model)
    GenLoRALayer.detach(separate)
    close(changed, output(separate, x), rtol=1e-5)
    before = len(calls)
    output(model, x).sum().backward()  # with autograd: a fresh generation for a fresh graph
    assert len(calls) - before == 2 * groups

"""Which layers get adapters, what gets frozen, and how bad targets are reported."""

import pytest
import torch
from torch import nn

from conftest import MODELS, make_bert, make_cnn, make_gpt2, make_vit
from genlora_pl import GenLoRAConfig, LoRAConfig, inject_adapters
from genlora_pl.adapters.genlora import GENERATOR
from genlora_pl.injection import adapter_layers, head_names, matches, merge_and_unload


def test_matching_rules_follow_peft():
    assert matches("blocks.0.attn.qkv", ["qkv"])
    assert matches("qkv", ["qkv"])
    assert not matches("blocks.0.attn.qkv_proj", ["qkv"])
    assert not matches("blocks.0.attn.xqkv", ["qkv"])
    assert matches("blocks.0.attn.qkv", ["attn.qkv"])
    assert matches("blocks.0.attn.qkv", r"blocks\.\d+\.attn\.qkv")
    assert not matches("blocks.0.attn.qkv", r"qkv")  # a regex must match the full name


@pytest.mark.parametrize(
    ("factory", "head"),
    [(make_vit, "head"), (make_cnn, "fc"), (make_bert, "classifier"), (make_gpt2, "score")],
)
def test_all_linear_takes_every_linear_map_but_the_head(factory, head):
    model = factory()
    assert head in head_names(model)
    names = inject_adapters(model, GenLoRAConfig(r=4))
    assert names and head not in names
    for name in names:
        base = adapter_layers(model)[name].base_layer
        if isinstance(base, nn.Conv2d):
            assert base.kernel_size == (1, 1)  # spatial convolutions are only adapted by name


def test_all_linear_on_vit_takes_qkv_proj_and_mlp():
    names = inject_adapters(make_vit(), GenLoRAConfig(r=4))
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in names})
    assert suffixes == ["fc1", "fc2", "proj", "qkv"]
    assert len(names) == 2 * 4


def test_injection_freezes_all_but_adapters_and_saved_modules():
    model = make_vit()
    inject_adapters(model, LoRAConfig(r=4, target_modules=["qkv"], modules_to_save=["head"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".qkv." in n and "base_layer" not in n} | {"head.weight", "head.bias"}
    assert any("lora_A" in n for n in trainable)
    # GenLoRA keeps the generator tensors of same-shaped layers stacked in one group
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=["qkv"], modules_to_save=["head"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"genlora_groups.g0.{t}" for t in GENERATOR} | {"head.weight", "head.bias"}
    assert model.genlora_groups.g0.paths == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]


def test_injection_is_idempotent():
    model = make_vit()
    cfg = GenLoRAConfig(r=4, target_modules=["qkv", "fc1"])
    first = inject_adapters(model, cfg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    second = inject_adapters(model, cfg)
    assert first == second
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(isinstance(m.base_layer, type(m)) for m in adapter_layers(model).values())
    # all-linear twice is a no-op as well
    model = make_vit()
    assert inject_adapters(model, GenLoRAConfig(r=4)) == inject_adapters(model, GenLoRAConfig(r=4))


def test_a_different_config_on_an_adapted_model_is_refused():
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=["qkv"]))
    with pytest.raises(ValueError, match="already has genlora adapters"):
        inject_adapters(model, LoRAConfig(r=4, target_modules=["qkv"]))


def test_nothing_matched_lists_candidates():
    with pytest.raises(ValueError) as err:
        inject_adapters(make_vit(), GenLoRAConfig(target_modules=["q_proj", "v_proj"]))
    msg = str(err.value)
    assert "target_modules=['q_proj', 'v_proj'] matched no layer of VisionTransformer" in msg
    assert "qkv" in msg and "fc1" in msg and "blocks.0.attn.qkv" in msg


def test_unsupported_layer_type_names_path_and_type():
    model = make_vit()
    with pytest.raises(
        TypeError, match=r"cannot adapt 'blocks.0.norm1': it is a timm.layers.norm.LayerNorm; adapters wrap nn.Linear"
    ):
        inject_adapters(model, GenLoRAConfig(target_modules=["norm1", "qkv"]))
    assert not adapter_layers(model)  # nothing was wrapped before the error


def test_grouped_convolution_is_refused_by_name():
    model = nn.Sequential(nn.Conv2d(8, 8, 3, groups=8))
    with pytest.raises(TypeError, match="groups=8"):
        inject_adapters(model, GenLoRAConfig(target_modules=["0"]))


def test_unknown_modules_to_save_is_an_error():
    with pytest.raises(ValueError, match=r"modules_to_save entries \['classifier'\] match no module"):
        inject_adapters(make_vit(), GenLoRAConfig(target_modules=["qkv"], modules_to_save=["classifier"]))


def test_exclude_modules():
    names = inject_adapters(make_vit(), GenLoRAConfig(r=4, target_modules=["qkv"], exclude_modules=r"blocks\.0\..*"))
    assert names == ["blocks.1.attn.qkv"]


def test_merge_and_unload_leaves_no_adapter_modules():
    model = make_gpt2()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=MODELS["gpt2"][1]))
    merge_and_unload(model)
    assert not adapter_layers(model)
    assert not hasattr(model, "genlora_pl_config")
    assert all("base_layer" not in k for k in model.state_dict())

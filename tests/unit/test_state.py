"""Adapter state dicts and folders: round trips, refusals, damaged files."""

import json

import pytest
import torch

from conftest import MODELS, make_vit, output, perturb
from genlora_pl import (
    GenLoRAConfig,
    LoRAConfig,
    adapter_state_dict,
    inject_adapters,
    load_adapter,
    load_adapter_state_dict,
    save_adapter,
)
from genlora_pl.injection import adapter_layers
from genlora_pl.state import CONFIG_NAME, WEIGHTS_NAME


def trained_vit(cfg=None):
    model = make_vit()
    inject_adapters(model, cfg or GenLoRAConfig(r=4, target_modules=["qkv", "fc1"], modules_to_save=["head"]))
    perturb(model)
    with torch.no_grad():
        model.head.weight.add_(1.0)
        next(iter(adapter_layers(model).values())).gate.fill_(0.7)
    return model


def test_state_dict_holds_only_what_was_trained():
    model = trained_vit()
    keys = set(adapter_state_dict(model))
    assert "blocks.0.attn.qkv.latent_A" in keys and "blocks.0.attn.qkv.gate" in keys
    assert "blocks.0.attn.qkv.temperature" in keys and "head.weight" in keys
    assert not any("base_layer" in k for k in keys)
    n_adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(v.numel() for v in adapter_state_dict(model).values()) == n_adapter + 2 * 4  # gate, temperature


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("adapter", ["genlora", "lora"])
def test_save_reseed_load_gives_equal_outputs(tmp_path, model_name, adapter):
    factory, targets, make_input, head = MODELS[model_name]
    cls = GenLoRAConfig if adapter == "genlora" else LoRAConfig
    cfg = cls(r=4, target_modules=targets, modules_to_save=[head], seed=1)
    torch.manual_seed(0)
    model = factory()
    inject_adapters(model, cfg)
    perturb(model)
    x = make_input()
    with torch.no_grad():
        expected = output(model, x)
    save_adapter(model, tmp_path / "adapter")

    torch.manual_seed(0)
    fresh = factory()  # the same base weights (same global seed), new adapters
    torch.manual_seed(123)
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(output(fresh, x), expected, rtol=0, atol=0)


def test_load_into_an_already_adapted_model(tmp_path):
    torch.manual_seed(0)
    model = trained_vit()
    save_adapter(model, tmp_path)
    torch.manual_seed(0)
    other = make_vit()
    inject_adapters(other, model.genlora_pl_config)
    load_adapter(other, tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other(x), model(x), rtol=0, atol=0)


def test_files_are_safetensors_and_json(tmp_path):
    save_adapter(trained_vit(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [WEIGHTS_NAME, CONFIG_NAME]
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert meta["config"]["adapter"] == "genlora" and meta["config"]["r"] == 4
    assert meta["backbone"] == "VisionTransformer"
    assert meta["layers"]["blocks.0.attn.qkv"] == [576, 192]


def test_adapter_for_another_rank_is_refused(tmp_path):
    save_adapter(trained_vit(GenLoRAConfig(r=8, target_modules=["qkv"])), tmp_path)
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=4, target_modules=["qkv"]))
    with pytest.raises(ValueError, match=r"saved with other adapter settings \(r=8 there, 4 here\)"):
        load_adapter(model, tmp_path)


def test_adapter_for_another_backbone_is_refused(tmp_path):
    from conftest import make_bert

    save_adapter(trained_vit(), tmp_path)
    with pytest.raises(ValueError, match="saved for a VisionTransformer, not a BertForSequenceClassification"):
        load_adapter(make_bert(), tmp_path)


def test_adapter_for_another_shape_of_the_same_backbone_is_refused(tmp_path):
    import timm

    save_adapter(trained_vit(GenLoRAConfig(r=4, target_modules=["qkv"])), tmp_path)
    wider = timm.create_model("vit_small_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2)
    with pytest.raises(
        ValueError, match=r"another backbone or target set: blocks.0.attn.qkv is \(576, 192\) there, \(1152, 384\) here"
    ):
        load_adapter(wider, tmp_path)
    assert not adapter_layers(wider)  # the model was left as it came


def test_state_dict_mismatches_are_all_or_nothing():
    model = trained_vit()
    state = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    before = {k: v.clone() for k, v in adapter_state_dict(model).items()}
    state["blocks.1.mlp.fc1.latent_A"] = torch.zeros(3, 2)
    for k in state:
        if k != "blocks.1.mlp.fc1.latent_A":
            state[k] = state[k] + 1
    with pytest.raises(ValueError, match=r"blocks.1.mlp.fc1.latent_A has shape \(3, 2\) there but \(192, 2\) here"):
        load_adapter_state_dict(model, state)
    assert all(torch.equal(v, before[k]) for k, v in adapter_state_dict(model).items())
    del state["blocks.1.mlp.fc1.latent_A"]
    state["blocks.5.attn.qkv.latent_A"] = torch.zeros(1)
    with pytest.raises(ValueError, match="1 missing key.*1 unexpected key"):
        load_adapter_state_dict(model, state)


def test_corrupted_weights_are_refused(tmp_path):
    save_adapter(trained_vit(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the checksum"):
        load_adapter(make_vit(), tmp_path)


def test_truncated_weights_name_the_file(tmp_path):
    save_adapter(trained_vit(), tmp_path)
    weights = tmp_path / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    meta = json.loads((tmp_path / CONFIG_NAME).read_text())
    meta.pop("weights_sha256")
    (tmp_path / CONFIG_NAME).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"cannot read adapter weights {weights}"):
        load_adapter(make_vit(), tmp_path)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="genlora_config.json does not exist"):
        load_adapter(make_vit(), tmp_path / "nope")


def test_failed_save_leaves_the_previous_adapter_intact(tmp_path, monkeypatch):
    model = trained_vit()
    save_adapter(model, tmp_path)
    good = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import genlora_pl.files

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(genlora_pl.files, "save_file", broken)
    with torch.no_grad():
        model.head.weight.add_(1.0)
    with pytest.raises(OSError, match="No space left"):
        save_adapter(model, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == good

"""export_peft writes a folder that PEFT itself loads and that reproduces our outputs."""

import copy
import json

import pytest
import torch

from conftest import MODELS, output, perturb
from genlora_pl import GenLoRAConfig, LoRAConfig, export_peft, inject_adapters
from genlora_pl.injection import adapter_layers

peft = pytest.importorskip("peft")


@pytest.mark.parametrize("model_name", list(MODELS))
@pytest.mark.parametrize("adapter", ["genlora", "lora"])
def test_peft_loads_the_export_with_equal_outputs(tmp_path, model_name, adapter):
    from peft import PeftModel

    factory, targets, make_input, head = MODELS[model_name]
    model = factory()
    base = copy.deepcopy(model)
    cls = GenLoRAConfig if adapter == "genlora" else LoRAConfig
    inject_adapters(model, cls(r=4, alpha=3.0, target_modules=targets, modules_to_save=[head]))
    perturb(model)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.gate.fill_(0.8)
            layer.temperature.fill_(1.3)
        getattr(model, head).weight.add_(0.5)
    x = make_input()
    with torch.no_grad():
        expected = output(model, x)
        assert not torch.allclose(expected, output(base, x), atol=1e-3)
    export_peft(model, tmp_path)

    loaded = PeftModel.from_pretrained(base, tmp_path).eval()
    with torch.no_grad():
        got = loaded(x)
        got = got.logits if hasattr(got, "logits") else got
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_export_config_folds_every_scale(tmp_path):
    factory, targets, _, head = MODELS["vit"]
    model = factory()
    inject_adapters(model, GenLoRAConfig(r=8, alpha=5.0, rslora=True, target_modules=targets, modules_to_save=[head]))
    export_peft(model, tmp_path)
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 8 and cfg["lora_alpha"] == 8
    assert cfg["use_rslora"] is False and cfg["modules_to_save"] == ["head"]
    assert cfg["target_modules"] == ["fc1", "fc2", "proj", "qkv"]  # short names select exactly the adapted layers
    meta = json.loads((tmp_path / "genlora_config.json").read_text())
    assert meta["config"]["group_size"] == 2 and meta["config"]["rslora"] is True

    from safetensors.torch import load_file

    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert tensors["base_model.model.blocks.0.attn.qkv.lora_A.weight"].shape == (8, 192)
    assert tensors["base_model.model.blocks.0.attn.qkv.lora_B.weight"].shape == (576, 8)
    assert tensors["base_model.model.head.weight"].shape == (5, 192)


def test_vllm_advice_names_the_rank_it_accepts_and_why_it_would_refuse():
    from genlora_pl.export.peft import vllm_advice

    config = {"r": 4, "rank_pattern": {"x": 12}, "base_model_name_or_path": "org/model", "modules_to_save": None}
    command, problems = vllm_advice(config, "/tmp/adapter")
    assert command == "vllm serve org/model --enable-lora --max-lora-rank 16 --lora-modules genlora=/tmp/adapter"
    assert problems == []
    _, problems = vllm_advice({**config, "r": 600, "modules_to_save": ["classifier"]}, "/tmp/adapter")
    assert any("rank 600 is above 512" in p for p in problems)
    assert any("modules_to_save ['classifier']" in p for p in problems)


def test_exports_name_a_hub_id_never_a_cache_path(tmp_path):
    from genlora_pl.export.checkpoint import portable_name

    assert portable_name("hf:org/model") == "org/model"
    assert portable_name("hf:anything", base_model_id="org/real") == "org/real"
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert portable_name(f"hf:{folder}") == str(folder)  # the user's own save_pretrained folder, as named

"""Files written by genlora_pl 0.1 (before the 0.2 renovation) still load and compute the same.

The fixtures in tests/fixtures/legacy_0_1 were written by that code (its make_fixtures.py, run at
commit f915859): two fit checkpoints (GenLoRA and LoRA adapters on a tiny ViT whose "pretrained"
weights lie beside them), two adapter folders, and the outputs they gave on a fixed input.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import timm
import torch

from genlora_pl import load_adapter
from genlora_pl.__main__ import main
from genlora_pl.checkpoints import read_checkpoint
from genlora_pl.export import restore_module

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_0_1"
VIT = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}
DEBUG = str(Path(__file__).resolve().parents[2] / "configs" / "debug.yaml")
EXPECTED = torch.load(LEGACY / "expected.pt", weights_only=True)


@pytest.fixture
def legacy(tmp_path, monkeypatch) -> Path:
    """A copy of the fixtures as the working directory (the checkpoints name their weights file
    relative to it); the originals are never touched."""
    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, folder)
    monkeypatch.chdir(folder)
    return folder


@pytest.mark.parametrize("method", ["genlora", "lora"])
def test_legacy_adapter_folder_loads_with_the_same_outputs(legacy, method):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **VIT)
    load_adapter(model, legacy / f"adapter_{method}")
    with torch.no_grad():
        out = model.eval()(EXPECTED["input"])
    torch.testing.assert_close(out, EXPECTED[f"adapter_{method}"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["genlora", "lora"])
def test_legacy_checkpoint_restores_exports_and_evaluates(legacy, method, capsys):
    module = restore_module(read_checkpoint(f"fit_{method}.ckpt"))
    with torch.no_grad():
        out = module.backbone(EXPECTED["input"])
    torch.testing.assert_close(out, EXPECTED[f"fit_{method}"], rtol=1e-5, atol=1e-6)

    assert main(["export", "--ckpt_path", f"fit_{method}.ckpt", "--output_dir", "export"]) == 0
    from safetensors.torch import load_file

    merged = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **VIT)
    merged.load_state_dict(load_file("export/merged/model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(merged.eval()(EXPECTED["input"]), EXPECTED[f"fit_{method}"], rtol=1e-4, atol=1e-5)

    args = ["--config", DEBUG, "--adapter.method", method, "--adapter.r", "4", "--model.pretrained", "true"]
    args += ["--model.checkpoint_path", "vit_weights.safetensors", "--model.backbone_kwargs", str(VIT).replace("'", "")]
    args += ["--trainer.enable_progress_bar", "false"] + (["--adapter.options", "null"] if method == "lora" else [])
    assert main(["validate", *args, "--ckpt_path", f"fit_{method}.ckpt"]) == 0
    assert "val/acc" in capsys.readouterr().out
    # and a fit resumes from it: 3 steps were done, 2 more
    assert main(["fit", *args, "--ckpt_path", f"fit_{method}.ckpt", "--trainer.max_steps", "5"]) == 0
    resumed = read_checkpoint(next(legacy.rglob("last.ckpt")))
    assert resumed["global_step"] == 5


@pytest.mark.parametrize("method", ["genlora", "lora"])
def test_legacy_optimizer_moments_land_on_the_same_parameters(legacy, method):
    import copy

    from genlora_pl.compat import legacy_parameter_order, migrate_optimizer_state

    checkpoint = read_checkpoint(f"fit_{method}.ckpt")
    old = copy.deepcopy(checkpoint["optimizer_states"][0])
    module = restore_module(checkpoint)
    migrate_optimizer_state(checkpoint, module)
    new = checkpoint["optimizer_states"][0]
    assert [g["name"] for g in new["param_groups"]] == [g["name"] for g in module.parameter_groups()]
    position = {id(p): k for k, p in enumerate(p for g in module.parameter_groups() for p in g["params"])}
    order = legacy_parameter_order(module)
    assert len(order) == len(old["param_groups"][0]["params"]) >= 10  # 4 layers x (8 or 2) + the head
    for legacy_position, (param, index) in zip(old["param_groups"][0]["params"], order, strict=True):
        moved = new["state"][position[id(param)]]
        for key in ("exp_avg", "exp_avg_sq"):
            value = moved[key] if index is None else moved[key][index]
            assert torch.equal(value, old["state"][legacy_position][key])

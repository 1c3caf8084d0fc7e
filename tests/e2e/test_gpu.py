"""GPU-only checks: FSDP1 (Lightning refuses it on the CPU), bf16 on CUDA. Marked ``gpu``; skipped
without CUDA. Run on a GPU machine with ``python -m pytest -m gpu tests/e2e/test_gpu.py``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import fit_debug, write_cifar10, write_tiny_vit_weights

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FSDP1 = {
    "class_path": "lightning.pytorch.strategies.FSDPStrategy",
    "init_args": {"auto_wrap_policy": ["timm.models.vision_transformer.Block"], "state_dict_type": "full"},
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    return str(write_tiny_vit_weights(root / "vit.safetensors")), str(write_cifar10(root / "data", 320, 64))


def fit(folder: Path, assets, trainer: dict) -> dict:
    weights, data = assets
    overlay = {
        "trainer": {
            "default_root_dir": str(folder),
            "enable_progress_bar": False,
            "accelerator": "gpu",
            "devices": 1,
            "max_steps": 6,
            "val_check_interval": 3,
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(folder)}},
            **trainer,
        },
        "model": {"pretrained": True, "checkpoint_path": weights},
        "data": {
            "class_path": "genlora_pl.data.CIFAR10Data",
            "init_args": {"root": data, "download": False, "image_size": 32, "augment": False, "batch_size": 16},
        },
    }
    fit_debug(folder, overlay)
    assert list(folder.rglob("spectra.png")), "spectra were measured (full parameters gathered)"
    return torch.load(next(folder.rglob("last.ckpt")), map_location="cpu", weights_only=True)


def test_fsdp1_trains_adapters_and_matches_a_plain_gpu_run(tmp_path, assets):
    sharded = fit(tmp_path / "fsdp1", assets, {"strategy": FSDP1})
    plain = fit(tmp_path / "plain", assets, {})
    a, b = sharded["state_dict"], plain["state_dict"]
    assert a.keys() == b.keys() and any("latent_A" in k for k in a)
    for key in a:
        assert a[key].shape == b[key].shape, key
        torch.testing.assert_close(a[key], b[key], rtol=1e-3, atol=1e-4, msg=key)
    assert a["backbone.blocks.0.attn.qkv.amps_B"].abs().sum() > 0


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed", "bf16-true"])
def test_mixed_precision_on_gpu(tmp_path, assets, precision):
    state = fit(tmp_path / precision, assets, {"precision": precision})
    assert all(torch.isfinite(v.float()).all() for v in state["state_dict"].values())


def test_generator_is_fp32_under_cuda_autocast():
    from torch import nn

    from genlora_pl import GenLoRAConfig
    from genlora_pl.adapters import GenLoRALayer

    layer = GenLoRALayer(nn.Linear(768, 2304).cuda(), GenLoRAConfig(r=32), "qkv")
    with torch.no_grad():
        layer.amps_B.normal_()
    x = torch.randn(8, 768, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = layer.factors()
        y = layer(x)
    assert a.dtype == b.dtype == torch.float32 and y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), layer(x), rtol=3e-2, atol=3e-2)
    layer.merge()
    assert math.isfinite(float(layer.base_layer.weight.sum()))


def test_cuda_graphs_capture_a_genlora_step_with_the_eager_loss():
    """``compile_mode: reduce-overhead`` replays a whole GenLoRA training step as CUDA graphs; its loss
    equals eager's to 1e-3 (relative; the graphs may fuse and reorder the same fp32 maths)."""
    import timm

    from genlora_pl import GenLoRAConfig, inject_adapters

    def step(model, optimizer, x, y) -> float:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss)

    losses = {}
    for mode in ("eager", "reduce-overhead"):
        torch.manual_seed(0)
        model = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10)
        inject_adapters(
            model, GenLoRAConfig(r=8, target_modules=["qkv", "proj", "fc1", "fc2"], modules_to_save=["head"])
        )
        model = model.cuda().train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        run = model if mode == "eager" else torch.compile(model, mode=mode)
        g = torch.Generator(device="cuda").manual_seed(1)
        x = torch.randn(16, 3, 32, 32, device="cuda", generator=g)
        y = torch.randint(0, 10, (16,), device="cuda", generator=g)
        losses[mode] = [step(run, optimizer, x, y) for _ in range(5)]
    assert all(math.isfinite(v) for v in losses["reduce-overhead"])
    for eager, graphed in zip(losses["eager"], losses["reduce-overhead"], strict=True):
        assert abs(graphed - eager) <= 1e-3 * abs(eager)

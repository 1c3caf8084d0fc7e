"""Mixed and true bf16 on the CPU, activation checkpointing and torch.compile with adapters inside."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from helpers import write_tiny_vit_weights

from genlora_pl.callbacks import AdapterCallback
from genlora_pl.data import MNISTSubsetData
from genlora_pl.injection import adapter_layers, merge_and_unload
from genlora_pl.tasks import ClassificationModule

VIT_KW = {"img_size": 32, "patch_size": 8, "depth": 2}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(write_tiny_vit_weights(tmp_path_factory.mktemp("w") / "vit.safetensors"))


def run(weights, steps=3, precision="32-true", **module_kw):
    L.seed_everything(0)
    module = ClassificationModule(
        backbone="timm:vit_tiny_patch16_224",
        checkpoint_path=weights,
        num_classes=10,
        backbone_kwargs=VIT_KW,
        **module_kw,
    )
    data = MNISTSubsetData(batch_size=16, image_size=32, augment=False, max_train_samples=64, max_eval_samples=16)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=steps,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[AdapterCallback(r=8, target_modules=["attn.qkv", "mlp.fc1"], log_every_n_steps=0)],
    )
    trainer.fit(module, datamodule=data)
    return module, float(trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_trains_with_finite_loss_and_merges_correctly(weights, precision):
    module, loss = run(weights, precision=precision)
    assert math.isfinite(loss)
    backbone = module.backbone.float() if precision == "bf16-mixed" else module.backbone
    layer = next(iter(adapter_layers(backbone).values()))
    assert float(layer.amps_B.float().abs().sum()) > 0  # trained
    dtype = layer.base_layer.weight.dtype
    assert dtype == (torch.bfloat16 if precision == "bf16-true" else torch.float32)
    x = torch.randn(2, 3, 32, 32, dtype=dtype)
    backbone.eval()
    with torch.no_grad():
        expected = backbone(x).float()
        w0 = layer.base_layer.weight.clone()
        delta = layer.delta_weight()
        plain = merge_and_unload(backbone)
        merged_weight = plain.get_submodule(layer.path).weight
        assert merged_weight.dtype == dtype
        assert torch.equal(merged_weight, (w0.float() + delta).to(dtype))  # fp32 maths, one rounding
        tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(plain(x).float(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("kind", ["timm", "hf"])
def test_activation_checkpointing_keeps_every_adapter_gradient(kind, tmp_path):
    from genlora_pl import GenLoRAConfig, inject_adapters
    from genlora_pl.distributed import enable_activation_checkpointing

    if kind == "timm":
        import timm

        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, **VIT_KW)
        x = torch.randn(2, 3, 32, 32)
    else:
        from transformers import BertConfig, BertForSequenceClassification

        model = BertForSequenceClassification(
            BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        )
        x = torch.randint(0, 50, (2, 8))
    inject_adapters(model, GenLoRAConfig(r=4, modules_to_save=None))
    for layer in adapter_layers(model).values():
        torch.nn.init.normal_(layer.amps_B, std=0.1)
    enable_activation_checkpointing(model)
    model.train()
    out = model(x)
    (out.logits if hasattr(out, "logits") else out).sum().backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.slow
def test_torch_compile_gives_the_same_loss(weights):
    _, eager = run(weights)
    _, compiled = run(weights, compile=True)
    assert compiled == pytest.approx(eager, rel=1e-4)

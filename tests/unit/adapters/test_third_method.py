"""A method added in one file (lora_fa.py: config, layer, one ``register`` call) works everywhere:
injection, a Lightning fit through the callback, save/load, merge, spectra, PEFT export."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import small_trainer

from conftest import make_vit, output
from genlora_pl import adapter_spectra, export_peft, inject_adapters, load_adapter, merge_and_unload, save_adapter
from genlora_pl.adapters import METHODS, config_from_dict
from genlora_pl.callbacks import AdapterCallback, AdapterMonitor
from genlora_pl.injection import adapter_layers
from genlora_pl.spectra import parameter_report
from genlora_pl.tasks import ClassificationModule

TARGETS = ["qkv", "proj", "fc1", "fc2"]


@pytest.fixture(scope="module")
def lora_fa():
    """Import (and so register) the method for these tests only: the registry is process-wide, and
    other tests list the registered methods in their messages."""
    import sys

    import lora_fa as module

    yield module
    METHODS.pop("lora_fa")
    sys.modules.pop("lora_fa")


def vit() -> torch.nn.Module:
    torch.manual_seed(0)  # the same base weights every time
    return make_vit()


def test_the_registry_knows_it_and_its_config_round_trips(lora_fa):
    assert METHODS["lora_fa"].layer is lora_fa.LoRAFALayer
    config = lora_fa.LoRAFAConfig(r=3, a_scale=0.5, target_modules=TARGETS)
    assert config_from_dict(config.to_dict()) == config
    assert lora_fa.LoRAFAConfig.options() == ["a_scale"]


def test_inject_merge_save_load_spectra_and_peft(tmp_path, lora_fa):
    x = torch.randn(2, 3, 32, 32)
    model = vit()
    base = output(model, x)
    inject_adapters(model, lora_fa.LoRAFAConfig(r=3, target_modules=TARGETS, modules_to_save=["head"]))
    assert torch.equal(output(model, x), base)  # B = 0: identity at injection
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("lora_B") or n.startswith("head.") for n in trainable)
    assert parameter_report(model).adapter_params == sum(
        3 * layer.out_features for layer in adapter_layers(model).values()
    )
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_(0, 0.05)
    adapted = output(model, x)
    assert not torch.allclose(adapted, base)

    spectra = adapter_spectra(model)
    assert all(0 < s.effective_rank <= 3 for s in spectra.values())

    save_adapter(model, tmp_path / "adapter")
    fresh = vit()
    load_adapter(fresh, tmp_path / "adapter")
    torch.testing.assert_close(output(fresh, x), adapted)

    export_peft(model, tmp_path / "peft")
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(vit(), tmp_path / "peft").eval()
    torch.testing.assert_close(output(peft_model, x), adapted, rtol=1e-5, atol=1e-5)

    merged = merge_and_unload(model)
    assert not adapter_layers(merged)
    torch.testing.assert_close(output(merged, x), adapted, rtol=1e-5, atol=1e-5)


def test_a_lightning_fit_trains_only_its_parameters(tmp_path, lora_fa):
    class Images(L.LightningDataModule):
        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 5)
            return torch.utils.data.DataLoader(data, batch_size=8)

    module = ClassificationModule(
        "timm:vit_tiny_patch16_224",
        num_classes=5,
        pretrained=False,
        backbone_kwargs={"img_size": 32, "patch_size": 8, "depth": 2},
    )
    callback = AdapterCallback(method="lora_fa", r=2, target_modules=TARGETS, options={"a_scale": 2.0})
    trainer = small_trainer(tmp_path, [callback, AdapterMonitor(log_every_n_steps=1, plots=False)], max_steps=2)
    trainer.fit(module, datamodule=Images())
    layers = adapter_layers(module.backbone)
    assert layers and all(isinstance(layer, lora_fa.LoRAFALayer) for layer in layers.values())
    assert all(layer.config.a_scale == 2.0 for layer in layers.values())
    assert any(layer.lora_B.abs().sum() > 0 for layer in layers.values())  # B trained away from zero
    fresh = lora_fa.LoRAFALayer(torch.nn.Linear(192, 576), layers["blocks.0.attn.qkv"].config, "blocks.0.attn.qkv")
    torch.testing.assert_close(layers["blocks.0.attn.qkv"].frozen_A, fresh.frozen_A)  # A never moved

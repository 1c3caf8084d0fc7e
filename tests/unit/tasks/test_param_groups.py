"""Parameter groups: the head at the optimizer's rate, adapters at their own, per-kind factors."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from helpers import small_trainer

from genlora_pl.callbacks import AdapterCallback
from genlora_pl.injection import adapter_layers
from genlora_pl.tasks import ClassificationModule

VIT = {"img_size": 32, "patch_size": 8, "depth": 2}
TARGETS = ["qkv", "fc1"]


def module(**kw) -> ClassificationModule:
    return ClassificationModule(
        "timm:vit_tiny_patch16_224",
        num_classes=5,
        pretrained=False,
        backbone_kwargs=VIT,
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3, weight_decay=0.01),
        **kw,
    )


def optimizer_of(m: ClassificationModule, method: str = "genlora") -> torch.optim.Optimizer:
    callback = AdapterCallback(method=method, r=4, target_modules=TARGETS)
    m.adapt_backbone("genlora", callback.inject)
    m.configure_model()
    return m.configure_optimizers()


def test_head_keeps_the_optimizer_rate_and_adapters_get_theirs():
    m = module(adapter_lr=2e-2, adapter_weight_decay=0.0, adapter_lr_multipliers={"latent": 0.1, "amp": 2.0})
    groups = {g["name"]: g for g in optimizer_of(m).param_groups}
    assert list(groups) == ["head", "adapter.amp", "adapter.center", "adapter.latent", "adapter.width"]
    assert groups["head"]["lr"] == 3e-3 and groups["head"]["weight_decay"] == 0.01
    assert groups["adapter.latent"]["lr"] == pytest.approx(2e-3) and groups["adapter.amp"]["lr"] == pytest.approx(4e-2)
    assert groups["adapter.center"]["lr"] == 2e-2 and groups["adapter.width"]["weight_decay"] == 0.0
    # every trained parameter is in exactly one group, and the head group is the head
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in m.parameters() if p.requires_grad)
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in m.backbone.head.parameters()}
    latents = {id(p) for g in m.backbone.genlora_groups.values() for p in (g.latent_A, g.latent_B)}
    assert {id(p) for p in groups["adapter.latent"]["params"]} == latents
    assert len(adapter_layers(m.backbone)) == 4 and len(latents) == 2 * 2  # 4 layers, 2 shape groups


def test_without_adapter_settings_everything_trains_at_the_optimizer_rate():
    groups = optimizer_of(module(), method="lora").param_groups
    assert [g["name"] for g in groups] == ["head", "adapter.A", "adapter.B"]
    assert {g["lr"] for g in groups} == {3e-3} and {g["weight_decay"] for g in groups} == {0.01}


def test_bad_group_settings_say_what_is_valid():
    with pytest.raises(ValueError, match=r"adapter_lr_multipliers names \['lora_B'\].*the kinds are \['amp', 'center'"):
        optimizer_of(module(adapter_lr_multipliers={"lora_B": 2.0}))
    with pytest.raises(ValueError, match="adapter_lr=-0.1 is not valid; give a positive number"):
        module(adapter_lr=-0.1)
    with pytest.raises(ValueError, match="adapter_lr_multipliers.latent=0 is not valid"):
        module(adapter_lr_multipliers={"latent": 0})


def test_each_group_is_logged_and_the_scheduler_scales_each(tmp_path):
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import Logger

    from genlora_pl.schedules import WarmupDecay

    class Images(L.LightningDataModule):
        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 5)
            return torch.utils.data.DataLoader(data, batch_size=4)

    class Recorder(Logger):
        name, version = "rec", 0
        rows: list = []

        def log_metrics(self, metrics, step=None):
            self.rows.append(metrics)

        def log_hyperparams(self, *args, **kwargs):
            pass

    m = module(adapter_lr=2e-2, lr_scheduler=lambda opt: WarmupDecay(opt, warmup_fraction=0.5))
    small_trainer(
        tmp_path,
        [AdapterCallback(r=4, target_modules=TARGETS), LearningRateMonitor()],
        logger=Recorder(),
        max_steps=4,
        log_every_n_steps=1,
    ).fit(m, datamodule=Images())
    logged = {k: v for row in Recorder.rows for k, v in row.items() if k.startswith("lr-")}
    assert {"lr-AdamW/head", "lr-AdamW/adapter.latent", "lr-AdamW/adapter.amp"} <= set(logged)
    first = next(row for row in Recorder.rows if "lr-AdamW/head" in row)
    assert first["lr-AdamW/adapter.latent"] / first["lr-AdamW/head"] == pytest.approx(2e-2 / 3e-3)


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_batchnorm_keeps_the_pretrained_statistics(tmp_path, freeze):
    class Images(L.LightningDataModule):
        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            data = torch.utils.data.TensorDataset(3 + torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 5)
            return torch.utils.data.DataLoader(data, batch_size=8)

    class Watch(L.Callback):
        modes: list = []

        def on_train_batch_start(self, trainer, pl_module, *args):
            bn = [m for m in pl_module.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            Watch.modes.append({m.training for m in bn})

    m = ClassificationModule("timm:resnet10t", num_classes=5, pretrained=False, freeze_batchnorm=freeze)
    m.configure_model()
    before = {n: b.clone() for n, b in m.backbone.named_buffers() if n.endswith("running_mean")}
    Watch.modes = []
    small_trainer(tmp_path, [AdapterCallback(r=2, target_modules="all-linear"), Watch()], max_steps=2).fit(
        m, datamodule=Images()
    )
    after = {n: b for n, b in m.backbone.named_buffers() if n.endswith("running_mean")}
    unchanged = all(torch.equal(before[n], after[n]) for n in before)
    assert unchanged == freeze
    assert Watch.modes == [{not freeze}] * 2


@pytest.mark.parametrize(("method", "rate"), [("genlora", 2e-2), ("lora", 3e-3)])
def test_a_rate_per_method_follows_the_method(method, rate):
    m = module(adapter_lr={"genlora": 2e-2, "lora": 3e-3})
    groups = {g["name"]: g for g in optimizer_of(m, method).param_groups}
    assert groups["head"]["lr"] == 3e-3
    assert {g["lr"] for name, g in groups.items() if name.startswith("adapter.")} == {rate}


def test_a_rate_table_without_the_method_is_refused_and_a_bad_rate_named():
    with pytest.raises(ValueError, match=r"adapter_lr gives rates for genlora but the adapters are lora"):
        optimizer_of(module(adapter_lr={"genlora": 2e-2}), "lora")
    with pytest.raises(ValueError, match=r"^adapter_lr.lora=-1 is not valid; give a positive number"):
        module(adapter_lr={"genlora": 2e-2, "lora": -1})


def test_a_genlora_reading_takes_its_own_rate_and_a_table_without_it_is_refused():
    table = {"genlora": 2e-2, "genlora_signed": 3e-3, "lora": 3e-3}

    def adapter_rates(adapter_lr: dict, reading: str) -> set[float]:
        m = module(adapter_lr=adapter_lr)
        callback = AdapterCallback(method="genlora", r=4, target_modules=TARGETS, options={"reading": reading})
        m.adapt_backbone("genlora", callback.inject)
        m.configure_model()
        return {g["lr"] for g in m.configure_optimizers().param_groups if g["name"].startswith("adapter.")}

    assert adapter_rates(table, "signed") == {3e-3}
    assert adapter_rates(table, "bumps") == {2e-2}  # the plain entry is the default reading's
    assert adapter_rates({**table, "genlora_bumps": 1e-2}, "bumps") == {1e-2}  # a reading's own entry wins
    with pytest.raises(ValueError, match=r"^adapter_lr gives rates for genlora, lora but the adapters are "
                       r"genlora_signed; add model.adapter_lr.genlora_signed \(or give one number\)\.$"):  # fmt: skip
        adapter_rates({"genlora": 2e-2, "lora": 3e-3}, "signed")


def test_the_mixed_reading_s_signed_rows_train_in_a_group_of_their_own():
    m = module(adapter_lr=1e-2, adapter_lr_multipliers={"signed": 0.3})
    options = {"reading": "mixed", "group_size": 2}
    m.adapt_backbone("genlora", AdapterCallback(method="genlora", r=8, target_modules=TARGETS, options=options).inject)
    m.configure_model()
    groups = {g["name"]: g for g in m.configure_optimizers().param_groups}
    assert list(groups) == [
        "head",
        "adapter.amp",
        "adapter.center",
        "adapter.latent",
        "adapter.signed",
        "adapter.width",
    ]
    assert groups["adapter.signed"]["lr"] == pytest.approx(3e-3) and groups["adapter.latent"]["lr"] == 1e-2
    signed = {id(p) for layer in adapter_layers(m.backbone).values() for n, p in layer.adapter_parameters().items()
              if n.startswith("signed_")}  # fmt: skip
    assert {id(p) for p in groups["adapter.signed"]["params"]} == signed and len(signed) == 2 * 8  # 2 shape groups


@pytest.mark.parametrize(("given", "signed_rate"), [(None, 0.3 * 1e-2), ({"signed": 1.0}, 1e-2), ({"amp": 2.0}, 3e-3)])
def test_the_mixed_reading_s_signed_rows_take_its_own_factor_unless_one_is_given(given, signed_rate):
    from genlora_pl.adapters.genlora import SIGNED_RATE

    assert SIGNED_RATE == 0.3  # the figure behind the parametrisation above
    m = module(adapter_lr=1e-2, adapter_lr_multipliers=given)
    options = {"reading": "mixed", "group_size": 2}
    m.adapt_backbone("genlora", AdapterCallback(method="genlora", r=8, target_modules=TARGETS, options=options).inject)
    m.configure_model()
    groups = {g["name"]: g["lr"] for g in m.configure_optimizers().param_groups}
    assert groups["adapter.signed"] == pytest.approx(signed_rate) and groups["adapter.latent"] == 1e-2
    assert groups["adapter.amp"] == pytest.approx(1e-2 * (given or {}).get("amp", 1.0))

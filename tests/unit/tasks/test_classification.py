"""ClassificationModule and AdapterCallback through the Python API."""

from __future__ import annotations

import lightning as L
import pytest
from helpers import small_trainer as trainer
from helpers import write_text_csv, write_tiny_bert
from torch import nn

from genlora_pl.callbacks import AdapterCallback, AdapterMonitor
from genlora_pl.data import TextClassificationData
from genlora_pl.injection import adapter_layers
from genlora_pl.schedules import Schedule
from genlora_pl.tasks import ClassificationModule, trained_state_keys


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return str(write_tiny_bert(tmp_path_factory.mktemp("bert")))


def text_data(tmp_path, bert, **kw):
    return TextClassificationData(
        train_file=str(write_text_csv(tmp_path / "t.csv")), batch_size=8, max_length=16, backbone=f"hf:{bert}", **kw
    )


class OptimizerProbe(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.trainable = {id(p) for p in pl_module.parameters() if p.requires_grad}
        backbone = pl_module.backbone
        adapters = {id(p) for layer in adapter_layers(backbone).values() for p in layer.adapter_parameters().values()}
        head = {id(p) for p in backbone.classifier.parameters()}
        self.expected = adapters | head


@pytest.mark.parametrize("method", ["genlora", "lora"])
def test_optimizer_holds_exactly_adapters_and_head(tmp_path, bert, method):
    probe = OptimizerProbe()
    module = ClassificationModule(backbone=f"hf:{bert}", num_classes=2)
    trainer(tmp_path, [AdapterCallback(method=method, r=4), probe], max_steps=1).fit(
        module, datamodule=text_data(tmp_path, bert)
    )
    assert probe.optimized == probe.trainable == probe.expected
    assert len(probe.expected) > 2


def test_head_only_and_full_finetuning(tmp_path, bert):
    for head_only, expect_all in ((True, False), (False, True)):
        probe = OptimizerProbe()
        module = ClassificationModule(backbone=f"hf:{bert}", num_classes=2, head_only=head_only)
        trainer(tmp_path, [AdapterCallback(method="none"), probe], max_steps=1).fit(
            module, datamodule=text_data(tmp_path, bert)
        )
        everything = {id(p) for p in module.parameters()}
        head = {id(p) for p in module.backbone.classifier.parameters()}
        assert probe.optimized == (everything if expect_all else head)
        assert not adapter_layers(module.backbone)


def test_callback_anneals_gate_and_temperature(tmp_path, bert):
    seen = []

    class Watch(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            layer = next(iter(adapter_layers(pl_module.backbone).values()))
            seen.append((trainer.global_step - 1, float(layer.gate), float(layer.temperature)))

    cb = AdapterCallback(
        r=4,
        gate=Schedule("linear", start=0.0, end=1.0, fraction=0.5),
        temperature=Schedule("cosine", start=3.0, end=1.0),
    )
    trainer(tmp_path, [cb, Watch()], max_steps=8).fit(
        ClassificationModule(backbone=f"hf:{bert}", num_classes=2), datamodule=text_data(tmp_path, bert)
    )
    assert [s for s, _, _ in seen] == list(range(8))
    for step, gate, temperature in seen:
        assert gate == pytest.approx(min(1.0, step / 4))
        assert temperature == pytest.approx(Schedule("cosine", 3.0, 1.0).value(step, 8))
    assert cb.state_dict()["step"] == 7


def test_tensorboard_gets_spectrum_histograms_and_figures(tmp_path, bert):
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer(tmp_path, [AdapterCallback(r=4), AdapterMonitor(log_every_n_steps=2)], logger=logger).fit(
        ClassificationModule(backbone=f"hf:{bert}", num_classes=2), datamodule=text_data(tmp_path, bert)
    )
    events = EventAccumulator(logger.log_dir, size_guidance={"histograms": 0, "images": 0}).Reload()
    tags = events.Tags()
    assert any(t.startswith("adapter_spectrum/bert.encoder.layer.0") for t in tags["histograms"])
    assert {"adapter/spectra", "adapter/diagnostics"} <= set(tags["images"])
    assert "adapter/effective_rank/mean" in tags["scalars"]


def test_trained_state_keys_include_norm_statistics_and_adapter_buffers():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Linear(4, 2))
    model.requires_grad_(False)
    model[2].requires_grad_(True)
    keys = trained_state_keys(model)
    assert keys == {"2.weight", "2.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"}


def test_trained_state_keys_see_through_wrappers():
    # FSDP1 and activation-checkpoint wrappers add names that state-dict keys do not carry; every
    # trained key must still be a real key, or a sharded run's checkpoint would lose the adapters.
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    from genlora_pl import GenLoRAConfig, inject_adapters

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    inject_adapters(model, GenLoRAConfig(r=2, target_modules=["0"], modules_to_save=["2"]))
    model[0] = checkpoint_wrapper(model[0])
    keys = trained_state_keys(model)
    assert keys <= set(model.state_dict())
    assert {"0.latent_A", "0.gate", "2.weight"} <= keys


def test_checkpoint_for_another_adapter_is_refused(tmp_path, bert):
    module = ClassificationModule(backbone=f"hf:{bert}", num_classes=2)
    cb = AdapterCallback(method="lora", r=4)
    t = trainer(tmp_path, [cb], max_steps=1, enable_checkpointing=True)
    t.fit(module, datamodule=text_data(tmp_path, bert))
    path = tmp_path / "x.ckpt"
    t.save_checkpoint(path)
    other = ClassificationModule(backbone=f"hf:{bert}", num_classes=2)
    with pytest.raises(
        ValueError, match=r"x.ckpt was saved for another model \(adapter='lora' there, 'genlora' here; "
    ):
        trainer(tmp_path, [AdapterCallback(method="genlora", r=4)], max_steps=2).fit(
            other, datamodule=text_data(tmp_path, bert), ckpt_path=path
        )


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="num_classes=1 is not valid"):
        ClassificationModule(backbone="timm:resnet18", num_classes=1)
    with pytest.raises(ValueError, match="backbone='vit' is not valid"):
        ClassificationModule(backbone="vit")


def test_global_batch_size_is_split_over_processes(tmp_path, bert):
    data = text_data(tmp_path, bert)
    data.trainer = type("T", (), {"world_size": 4})()
    assert data.per_device_batch_size() == 2
    data.trainer = type("T", (), {"world_size": 3})()
    with pytest.raises(ValueError, match="batch_size=8 cannot be split over 3 processes"):
        data.per_device_batch_size()


def test_lora_and_genlora_settings_are_checked_by_the_callback():
    with pytest.raises(ValueError, match=r"\['kernel'\] are not settings of method='lora'; it takes no options"):
        AdapterCallback(method="lora", options={"kernel": "gaussian"})
    with pytest.raises(ValueError, match=r"\['rank'\] are not settings of method='genlora'; its options are"):
        AdapterCallback(options={"rank": 4})
    with pytest.raises(ValueError, match="log_every_n_steps=-1"):
        AdapterMonitor(log_every_n_steps=-1)


def test_moved_callback_keys_still_work_with_a_deprecation_warning():
    with pytest.warns(FutureWarning, match="adapter.group_size is now adapter.options.group_size"):
        cb = AdapterCallback(group_size=4, kernel="inverse_quadratic", options={"width0": 0.5})
    assert (cb.config.group_size, cb.config.kernel, cb.config.width0) == (4, "inverse_quadratic", 0.5)
    with pytest.warns(
        FutureWarning, match="adapter.log_every_n_steps is now monitor.log_every_n_steps .add AdapterMonitor"
    ):
        AdapterCallback(log_every_n_steps=3)

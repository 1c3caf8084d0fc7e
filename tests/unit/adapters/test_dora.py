"""DoRA as a third built-in method: identity at injection, PEFT's own DoRA on the same weights gives
our outputs, the export reloads in PEFT, merge and unmerge are exact, magnitudes train."""

import copy
import json

import pytest
import torch
from torch import nn

from conftest import make_gpt2
from genlora_pl import DoRAConfig, export_peft, inject_adapters, merge_and_unload
from genlora_pl.adapters import DoRALayer
from genlora_pl.injection import adapter_layers, merge_adapters, unmerge_adapters

peft = pytest.importorskip("peft")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 24)
        self.b = nn.Linear(24, 8, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def trained(model: nn.Module) -> None:
    """Away from the identity: a direction update and magnitudes that moved."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in adapter_layers(model).values():
            layer.lora_B.copy_(0.2 * torch.randn(layer.lora_B.shape, generator=g))
            layer.magnitude.mul_(1 + 0.1 * torch.randn(layer.magnitude.shape, generator=g))


@pytest.mark.parametrize("factory", [Net, make_gpt2], ids=["linear", "gpt2_conv1d"])
def test_peft_reproduces_our_dora_and_reloads_its_export(tmp_path, factory):
    torch.manual_seed(0)
    model = factory()
    base = copy.deepcopy(model)
    targets = ["a", "b"] if factory is Net else ["c_attn", "c_fc"]
    x = torch.randn(3, 16) if factory is Net else torch.randint(1, 100, (2, 12))
    out = (lambda m: m(x)) if factory is Net else (lambda m: m(x).logits)
    inject_adapters(model, DoRAConfig(r=4, alpha=6.0, target_modules=targets))
    model.eval()
    with torch.no_grad():
        assert torch.allclose(out(model), out(base), atol=1e-6)  # identity at injection
    trained(model)
    with torch.no_grad():
        ours = out(model)
        assert not torch.allclose(ours, out(base), atol=1e-3)

    export_peft(model, tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(out(loaded), ours, rtol=1e-5, atol=1e-5)


def test_merge_and_unmerge_are_exact_and_magnitudes_train():
    torch.manual_seed(0)
    model, x = Net(), torch.randn(5, 16)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    inject_adapters(model, DoRAConfig(r=4, target_modules=["a", "b"]))
    trained(model)
    with torch.no_grad():
        expected = model(x)
        merge_adapters(model)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
        unmerge_adapters(model)
        for name, layer in adapter_layers(model).items():
            torch.testing.assert_close(layer.base_layer.weight, original[f"{name}.weight"], rtol=1e-5, atol=1e-6)
    loss = model(x).pow(2).mean()
    loss.backward()
    layer = adapter_layers(model)["a"]
    assert layer.magnitude.grad is not None and layer.magnitude.grad.abs().sum() > 0
    assert layer.parameter_kind("magnitude") == "magnitude"
    plain = merge_and_unload(model)
    assert not adapter_layers(plain)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-6)


def test_a_convolution_is_refused_in_one_sentence():
    with pytest.raises(TypeError, match=r"DoRA here adapts linear layers"):
        DoRALayer(nn.Conv2d(3, 8, 1), DoRAConfig(r=2), "conv")


def test_dora_on_an_nf4_base_starts_as_the_base_and_trains():
    """A 4-bit NF4 frozen base (model.init_args.quantize: nf4): the magnitudes come from the dequantized
    weight, so the adapted layer starts exactly at the quantized layer's output, and every DoRA parameter
    gets a gradient."""
    pytest.importorskip("torchao")
    from genlora_pl.quantize import quantize_nf4

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 64))
    assert quantize_nf4(model) == 2
    x = torch.randn(4, 128)
    with torch.no_grad():
        quantized = model(x)
    inject_adapters(model, DoRAConfig(r=4, target_modules=["0", "2"]))
    torch.testing.assert_close(model(x), quantized, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # B starts at zero, which leaves A without a gradient at the first step
        for layer in adapter_layers(model).values():
            layer.lora_B.normal_()
    model(x).square().sum().backward()
    for layer in adapter_layers(model).values():
        for name in ("lora_A", "lora_B", "magnitude"):
            assert getattr(layer, name).grad.abs().sum() > 0, name

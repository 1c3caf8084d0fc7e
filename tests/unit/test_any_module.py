"""Adapters go into any ``nn.Module``: a ``Sequential`` root, a ``Sequential`` inside a model, a
``ModuleList`` the model's forward iterates, a plain custom module; for every registered method:
identity at init, a training step that changes the output, merge, save/load and the PEFT export."""

import copy
import warnings

import pytest
import torch
from torch import nn

from conftest import perturb
from genlora_pl import export_peft, inject_adapters, load_adapter, merge_and_unload, save_adapter
from genlora_pl.adapters import METHODS, config_class
from genlora_pl.injection import adapter_layers

peft = pytest.importorskip("peft")


class Stacked(nn.Module):
    """A model whose forward iterates a ModuleList, with a Sequential block inside."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(16, 16) for _ in range(3)])
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.out = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.out(x + self.mlp(x))


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(16, 24)
        self.b = nn.Linear(24, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


MODELS = {
    "sequential_root_one_layer": (lambda: nn.Sequential(nn.Linear(64, 48)), ["0"], 64),
    "sequential_root": (
        lambda: nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 4)),
        ["0", "2", "3"],
        16,
    ),
    "module_list_and_inner_sequential": (Stacked, ["blocks.0", "blocks.1", "blocks.2", "mlp.0", "mlp.2"], 16),
    "plain": (Plain, ["a", "b"], 16),
}


def build(name: str, method: str) -> tuple[nn.Module, nn.Module, torch.Tensor]:
    factory, targets, width = MODELS[name]
    torch.manual_seed(0)
    model = factory()
    base = copy.deepcopy(model)
    inject_adapters(model, config_class(method)(r=2, target_modules=targets))
    return model, base, torch.randn(5, width)


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("name", list(MODELS))
def test_every_method_works_on_any_module(tmp_path, name, method):
    model, base, x = build(name, method)
    with torch.no_grad():
        assert torch.allclose(model(x), base(x), atol=1e-6), "not the identity at init"
    assert len(list(model.children())) == len(list(base.children())) or not isinstance(model, nn.Sequential)

    # a training step on a GenLoRA/LoRA update that starts at zero moves the output
    perturb(model, scale=0.1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    before = model(x).detach()
    loss = (model(x) - 1.0).pow(2).mean()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    optimizer.step()
    with torch.no_grad():
        trained = model(x)
    assert not torch.allclose(trained, before, atol=1e-5)

    # save and load into a fresh copy of the base
    save_adapter(model, tmp_path / "adapter")
    other, _, _ = build(name, method)
    load_adapter(other, tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(other(x), trained, atol=1e-6)

    # PEFT reads the export and gives the same outputs
    export_peft(model, tmp_path / "peft")
    loaded = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "peft").eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x), trained, atol=1e-5)

    # merged: a plain model of the original structure with the same outputs
    merged = merge_and_unload(model)
    assert not adapter_layers(merged)
    assert [type(m) for m in merged.modules()] == [type(m) for m in base.modules()]
    with torch.no_grad():
        assert torch.allclose(merged(x), trained, atol=1e-5)


def test_a_sequential_root_keeps_its_length_and_indexing():
    model, base, x = build("sequential_root", "genlora")
    assert len(model) == len(base) and isinstance(model[-1].base_layer, nn.Linear)
    assert [n for n, _ in model.named_children()] == ["0", "1", "2", "3"]


def test_all_linear_on_a_model_without_a_known_head_says_its_last_layer_is_adapted():
    from genlora_pl.adapters import LoRAConfig

    model = Stacked()
    with pytest.warns(UserWarning, match=r"all-linear found no output head in Stacked .* layer 'out' is adapted too"):
        names = inject_adapters(model, LoRAConfig(r=2))
    assert "out" in names
    quiet = Stacked()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "out" not in inject_adapters(quiet, LoRAConfig(r=2, exclude_modules=["out"]))


def test_a_rank_above_a_layers_dimensions_is_named():
    from genlora_pl.adapters import GenLoRAConfig

    with pytest.warns(UserWarning, match=r"r=20 is above the rank 16 that layer 'a' \(and 1 more layers\) can take"):
        inject_adapters(Plain(), GenLoRAConfig(r=20, target_modules=["a", "b"]))

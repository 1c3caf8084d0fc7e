"""The registry is its own module, and a method defined outside the package is named by the dotted
path of the module that registers it, imported on demand."""

import sys

import pytest
from torch import nn

from genlora_pl import inject_adapters
from genlora_pl.adapters import METHODS, method
from genlora_pl.callbacks import AdapterCallback
from genlora_pl.injection import adapter_layers

PLUGIN = """
from dataclasses import dataclass
from typing import ClassVar

from genlora_pl.adapters import LoRAConfig, LoRALayer, register


@dataclass
class HalfLoRAConfig(LoRAConfig):
    name: ClassVar[str] = "half_lora"
    shrink: float = 0.5


class HalfLoRALayer(LoRALayer):
    pass


register(HalfLoRAConfig, HalfLoRALayer)
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "my_method.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    METHODS.pop("half_lora", None)
    for name in ("my_pkg", "my_pkg.my_method"):
        sys.modules.pop(name, None)


def test_a_dotted_path_imports_and_names_the_method_its_module_registers(plugin):
    assert "half_lora" not in METHODS
    callback = AdapterCallback(method="my_pkg.my_method", r=2, target_modules=["0"], options={"shrink": 0.25})
    assert callback.config.name == "half_lora" and callback.config.shrink == 0.25
    model = nn.Sequential(nn.Linear(8, 8))
    callback.inject(model)
    assert type(adapter_layers(model)["0"]).__name__ == "HalfLoRALayer"
    assert method("my_pkg.my_method.HalfLoRAConfig").config is type(callback.config)
    assert method("half_lora") is method("my_pkg.my_method")  # by name once imported
    inject_adapters(nn.Sequential(nn.Linear(4, 4)), callback.config.__class__(r=1, target_modules=["0"]))


def test_an_unknown_dotted_path_gets_one_sentence(plugin):
    with pytest.raises(
        ValueError, match=r"adapter='my_pkg.nothing' is unknown; choose one of dora, genlora, lora.*dotted path"
    ):
        method("my_pkg.nothing")


def test_registry_module_imports_no_cycle():
    import genlora_pl.adapters.config as config

    assert not hasattr(config, "METHODS") and not hasattr(config, "register")

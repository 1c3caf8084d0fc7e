import pytest

from genlora_pl.adapters import GenLoRAConfig, LoRAConfig, adapter_class, config_from_dict
from genlora_pl.adapters.config import config_differences


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"r": 0}, "r=0"),
        ({"r": -3}, "r=-3"),
        ({"r": 2.5}, "r=2.5"),
        ({"group_size": 0}, "group_size=0"),
        ({"group_size": -1}, "group_size=-1"),
        ({"kernel": "cubic"}, "kernel='cubic'"),
        ({"alpha": 0}, "alpha=0"),
        ({"alpha": -1.0}, "alpha=-1.0"),
        ({"alpha": float("nan")}, "alpha=nan"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"width0": 0.0}, "width0=0.0"),
        ({"center_init": "grid"}, "center_init='grid'"),
        ({"target_modules": ""}, "target_modules=''"),
        ({"target_modules": [1, 2]}, "target_modules=[1, 2]"),
        ({"modules_to_save": "head"}, "modules_to_save='head'"),
    ],
)
def test_bad_values_name_the_value(kwargs, fragment):
    with pytest.raises(ValueError) as err:
        GenLoRAConfig(**kwargs)
    assert fragment in str(err.value)
    # one sentence that also says what would be valid
    assert str(err.value).count("\n") == 0 and ("valid" in str(err.value) or "choose" in str(err.value))


def test_lora_shares_validation():
    with pytest.raises(ValueError, match="r=0"):
        LoRAConfig(r=0)


def test_scaling_plain_and_rslora():
    assert GenLoRAConfig(r=16, alpha=8).scaling == 0.5
    assert GenLoRAConfig(r=16, alpha=8, rslora=True).scaling == 2.0
    assert GenLoRAConfig(r=16).scaling == 2.0  # alpha defaults to 2r


def test_round_trip_and_unknown_adapter():
    cfg = GenLoRAConfig(r=4, group_size=3, kernel="inverse_quadratic", target_modules=["qkv"])
    assert config_from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="adapter='vera' is unknown; choose one of dora, genlora, lora"):
        adapter_class("vera")
    with pytest.raises(ValueError, match="unknown genlora config keys \\['rank'\\]"):
        config_from_dict({"adapter": "genlora", "rank": 3})


def test_a_file_written_before_a_setting_existed_compares_as_its_default():
    # checkpoints of 0.2 have no center_init: they were made with random centres, the default
    old = {k: v for k, v in GenLoRAConfig(r=4).to_dict().items() if k != "center_init"}
    assert config_differences(old, GenLoRAConfig(r=4)) == []
    assert config_differences(old, GenLoRAConfig(r=4, center_init="kmeans")) == [
        "center_init='random' there, 'kmeans' here"
    ]
    # another method's defaults are not filled in: the method itself differs
    assert config_differences(old, LoRAConfig(r=4))[0] == "adapter='genlora' there, 'lora' here"

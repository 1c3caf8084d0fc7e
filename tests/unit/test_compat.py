"""Names that became method-neutral still answer, once, with a deprecation line; the public API is
listed by ``dir``; 0.1 callback states move to today's names."""

import warnings

import pytest

import genlora_pl
from genlora_pl import compat


def test_old_callback_name_answers_with_one_deprecation_line():
    from genlora_pl.callbacks import AdapterCallback

    for module in ("genlora_pl", "genlora_pl.callbacks", "genlora_pl.callbacks.adapters"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            old = __import__(module, fromlist=["x"]).GenLoRACallback
        assert old is AdapterCallback
        assert len(caught) == 1 and "GenLoRACallback is now" in str(caught[0].message)
    with pytest.warns(FutureWarning, match="genlora_pl.callbacks.genlora is now genlora_pl.callbacks.adapters"):
        import genlora_pl.callbacks.genlora  # noqa: F401
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        genlora_pl.nothing  # noqa: B018


def test_the_public_api_is_listed_and_complete():
    names = dir(genlora_pl)
    for name in ("AdapterCallback", "CausalLMModule", "ClassificationModule", "AdapterTask", "inject_adapters"):
        assert name in names and getattr(genlora_pl, name) is not None
    assert "GenLoRACallback" not in genlora_pl.__all__


def test_old_callback_state_moves_to_the_new_names():
    checkpoint = {
        "callbacks": {"GenLoRACallback": {"config": {"adapter": "lora"}, "step": 3, "best": {"val/acc": 0.5}}}
    }
    compat.migrate_checkpoint({**checkpoint, "format_version": 2}, module=None)
    state = checkpoint["callbacks"]
    assert state == {
        "AdapterCallback": {"config": {"adapter": "lora"}, "step": 3},
        "AdapterMonitor": {"best": {"val/acc": 0.5}},
    }

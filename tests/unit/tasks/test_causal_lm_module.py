"""The causal-LM task's loss (logits only where labels are, packed rows), its low-precision bases
(bf16, NF4) and what an NF4 base exports."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import write_sums, write_tiny_llama

from genlora_pl.adapters import LoRAConfig
from genlora_pl.data import InstructionData
from genlora_pl.injection import adapter_layers, inject_adapters
from genlora_pl.quantize import NF4Linear, frozen_bytes
from genlora_pl.tasks import CausalLMModule


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return str(write_tiny_llama(tmp_path_factory.mktemp("llama")))


def module(llama: str, **kw) -> CausalLMModule:
    m = CausalLMModule(backbone=f"hf:{llama}", **kw)
    m.adapt_backbone("lora", lambda b: inject_adapters(b, LoRAConfig(r=4, target_modules=["q_proj", "v_proj"])))
    m.configure_model()
    for layer in adapter_layers(m.backbone).values():  # a non-zero update, so the test sees the adapters
        torch.nn.init.normal_(layer.lora_B, std=0.1)
    return m


def batches(llama: str, tmp_path, packing: bool) -> tuple[dict, InstructionData]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = write_sums(tmp_path / "s.jsonl", n=12)
    d = InstructionData(train_file=str(path), val_file=str(path), test_file=str(path), batch_size=12,
                        backbone=f"hf:{llama}", max_length=48, packing=packing)  # fmt: skip
    d.setup()
    train = d.splits["train"]
    return d.collate([train[i] for i in range(len(train))]), d


def full_logits_loss(m: CausalLMModule, batch: dict) -> torch.Tensor:
    """The loss as 0.2 computed it: every position's logits in fp32, then the labelled ones."""
    logits = m.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), labels.clamp_min(0), reduction="none")
    return losses[labels != -100].mean()


def test_logits_only_where_labels_are_give_the_full_loss(llama, tmp_path):
    m = module(llama)
    batch, _ = batches(llama, tmp_path, packing=False)
    seen = []
    head = m.backbone.get_output_embeddings()
    handle = head.register_forward_hook(lambda mod, args, out: seen.append(tuple(out.shape)))
    token_loss, correct, count = m.losses(batch)
    handle.remove()
    labelled = int((batch["labels"][:, 1:] != -100).sum())
    assert seen == [(labelled, head.out_features)] and int(count) == labelled  # (tokens, vocab), not (B, L, V)
    torch.testing.assert_close(token_loss.mean(), full_logits_loss(m, batch), rtol=0, atol=1e-5)
    token_loss.mean().backward()
    assert all(p.grad is not None for p in m.parameters() if p.requires_grad)
    with torch.no_grad():  # outside a loss the head sees everything (generation)
        assert m(batch).shape[:2] == batch["input_ids"].shape


def test_packed_rows_give_the_same_loss_as_one_example_a_row(llama, tmp_path):
    m = module(llama)
    unpacked, _ = batches(llama, tmp_path / "a", packing=False)
    packed, d = batches(llama, tmp_path / "b", packing=True)
    assert "attention_mask" not in packed and packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]
    assert d.splits["train"].fill > 0.5
    loss_packed, _, n_packed = m.losses(packed)
    loss_unpacked, _, n_unpacked = m.losses(unpacked)
    assert int(n_packed) == int(n_unpacked)
    torch.testing.assert_close(loss_packed.sum(), loss_unpacked.sum(), rtol=1e-5, atol=1e-4)
    # attention really stays inside each example: the same rows without position ids mix them
    mixed = {k: v for k, v in packed.items() if k != "position_ids"}
    assert (m.losses(mixed)[0] - loss_packed).abs().max() > 1e-3


def test_a_bf16_base_keeps_fp32_adapters_and_trains(llama, tmp_path):
    m = module(llama, dtype="bfloat16")
    backbone = m.backbone
    layers = adapter_layers(backbone)
    assert all(layer.base_layer.weight.dtype == torch.bfloat16 for layer in layers.values())
    assert all(p.dtype == torch.float32 for p in m.parameters() if p.requires_grad)
    fp32 = module(llama, dtype="float32")
    assert frozen_bytes(backbone) <= 0.55 * frozen_bytes(fp32.backbone)
    batch, _ = batches(llama, tmp_path, packing=False)
    loss = m.losses(batch)[0].mean()
    assert torch.isfinite(loss) and abs(loss.item() - fp32.losses(batch)[0].mean().item()) < 0.1
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in m.parameters() if p.requires_grad)


def test_an_nf4_base_trains_adapters_only_and_exports_dequantized(llama, tmp_path):
    pytest.importorskip("torchao")
    m = module(llama, dtype="bfloat16", quantize="nf4")
    quantized = [n for n, mod in m.backbone.named_modules() if isinstance(mod, NF4Linear)]
    assert len(quantized) == 14 and not isinstance(m.backbone.get_output_embeddings(), NF4Linear)
    assert all(isinstance(layer.base_layer, NF4Linear) for layer in adapter_layers(m.backbone).values())
    batch, _ = batches(llama, tmp_path, packing=False)
    frozen = {n: p.detach().clone() for n, p in m.named_parameters() if type(p.data) is torch.Tensor}
    frozen = {n: p for n, p in frozen.items() if not m.get_parameter(n).requires_grad}
    optimizer = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    before = m.losses(batch)[0].mean()
    before.backward()
    optimizer.step()
    assert m.losses(batch)[0].mean() < before  # the adapters learn on the 4-bit base
    for name, p in m.named_parameters():
        if name in frozen and type(p.data) is torch.Tensor:
            assert torch.equal(p.detach(), frozen[name]), name

    from genlora_pl.export.checkpoint import _save_merged

    reference = m.eval()(batch).float()
    _save_merged(m, tmp_path / "merged")
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    with torch.no_grad():
        out = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    # one bf16 rounding of W + dW apart from the unmerged NF4 model
    assert (out - reference).abs().max() < 0.1 * reference.abs().max()


def test_bad_precision_settings_name_the_value(llama):
    with pytest.raises(ValueError, match="dtype='int8' is not valid; choose auto, float32, bfloat16, float16"):
        CausalLMModule(backbone=f"hf:{llama}", dtype="int8")
    with pytest.raises(ValueError, match="quantize='gptq' is not valid; choose nf4 or null"):
        CausalLMModule(backbone=f"hf:{llama}", quantize="gptq")

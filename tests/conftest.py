"""Small real models shared by the tests: timm and transformers architectures at toy sizes."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from torch import nn

from genlora_pl.adapters import GenLoRALayer, LoRALayer
from genlora_pl.injection import adapter_layers

# The tests' tokenised data goes into a datasets cache of their own (inherited by the CLI runs they
# start), not into the user's ~/.cache/huggingface/datasets.
os.environ.setdefault("HF_DATASETS_CACHE", tempfile.mkdtemp(prefix="genlora-datasets-"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_vit() -> nn.Module:
    import timm

    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32, patch_size=8, depth=2
    ).eval()


def make_cnn() -> nn.Module:
    import timm

    # zero_init_last=False: a zero-initialised last BN of each block would block every gradient
    # into the block, which is timm's choice for training from scratch, not what a fine-tune sees.
    return timm.create_model("resnet10t", pretrained=False, num_classes=5, zero_init_last=False).eval()


def make_bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(cfg).eval()


def make_gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=64, num_labels=3, pad_token_id=0)
    return GPT2ForSequenceClassification(cfg).eval()


MODELS = {
    # name: (factory, targets, input factory, head name)
    "vit": (make_vit, ["qkv", "proj", "fc1", "fc2"], lambda: torch.randn(2, 3, 32, 32), "head"),
    "cnn": (make_cnn, r"layer\d\.\d\.(conv\d|downsample\.1)", lambda: torch.randn(2, 3, 64, 64), "fc"),
    "bert": (make_bert, ["query", "key", "value", "dense"], lambda: torch.randint(1, 100, (2, 12)), "classifier"),
    "gpt2": (make_gpt2, ["c_attn", "c_proj", "c_fc"], lambda: torch.randint(1, 100, (2, 12)), "score"),
}


def output(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def perturb(model: nn.Module, scale: float = 0.5) -> None:
    """Make every adapter's update non-zero, so equalities cannot pass trivially."""
    for layer in adapter_layers(model).values():
        if isinstance(layer, GenLoRALayer):
            layer.amps_B.normal_(0, scale)
            if layer.config.reading == "signed":  # B = (b_i . v_k) k(...): zero while its latent is
                layer.latent_B.normal_(0, scale)
            layer.centers_A.add_(0.1 * torch.randn_like(layer.centers_A))
            layer.log_widths_B.add_(0.1 * torch.randn_like(layer.log_widths_B))
        elif isinstance(layer, LoRALayer):
            layer.lora_B.normal_(0, scale * 0.1)

"""The shared adapter forward: the dense path for small layers equals the factored path."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from genlora_pl.adapters import GenLoRAConfig, LoRAConfig
from genlora_pl.adapters.genlora import GenLoRALayer
from genlora_pl.adapters.lora import LoRALayer


def test_dense_update_is_chosen_when_dw_is_no_larger_than_the_factors():
    assert GenLoRALayer(nn.Linear(16, 96), GenLoRAConfig(r=128), "a").dense_update  # 1,536 <= 14,336
    assert not GenLoRALayer(nn.Linear(384, 384), GenLoRAConfig(r=128), "b").dense_update  # 147,456 > 98,304
    assert not LoRALayer(nn.Linear(512, 512), LoRAConfig(r=16), "c").dense_update


@pytest.mark.parametrize("method", ["genlora", "lora"])
@pytest.mark.parametrize(
    "base, shape",
    [
        (nn.Linear(12, 20), (3, 5, 12)),
        (Conv1D(20, 12), (3, 5, 12)),  # GPT-2 layout: nf=20 outputs, nx=12 inputs
        (nn.Conv2d(6, 10, 3, stride=2, padding=1), (2, 6, 9, 9)),
    ],
)
def test_dense_and_factored_forwards_agree_in_value_and_gradient(method, base, shape):
    torch.manual_seed(0)
    if method == "genlora":
        layer = GenLoRALayer(base, GenLoRAConfig(r=16, group_size=2), "x")
    else:
        layer = LoRALayer(base, LoRAConfig(r=16), "x")
    assert layer.dense_update  # every layer here is narrower than the rank makes worthwhile to factor
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.add_(0.1 * torch.randn_like(p))  # B != 0
    x = torch.randn(*shape)
    results = []
    for dense in (True, False):
        layer.dense_update = dense
        layer.zero_grad()
        out = layer(x)
        out.pow(2).sum().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in layer.adapter_parameters().items()}))
    (dense_out, dense_grads), (factored_out, factored_grads) = results
    assert (dense_out - layer.base_layer(x)).abs().max() > 1e-3  # the update is not zero
    torch.testing.assert_close(dense_out, factored_out, rtol=1e-5, atol=1e-5)
    for name, grad in dense_grads.items():
        # fp32 sums in two orders: their error scales with the largest gradient (127 for the Conv2d's
        # lora_B, where 1e-5 absolute failed once in a full run), not with each element's own size
        atol = 1e-6 * float(grad.abs().max())
        torch.testing.assert_close(grad, factored_grads[name], rtol=1e-4, atol=atol, msg=name)

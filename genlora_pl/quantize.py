"""A frozen base in low precision: bf16/fp16 weights, or linear weights in 4-bit NF4 (QLoRA's format).

``NF4Linear`` keeps a frozen ``nn.Linear``'s weight as torchao's ``NF4Tensor`` (4 bits a weight
plus a scale per 64-weight block, about 0.28x of fp32) and dequantizes it block by block inside
the matmul, forward and backward (torchao's ``linear_nf4``). It subclasses ``nn.Linear``, so adapters
wrap it like any linear layer; torchao runs it on the CPU and on GPUs alike. The LM head and the
embeddings stay in the base dtype (they are few and precision-sensitive, as in QLoRA).

Merging an adapter into a 4-bit weight would round the update away, so :func:`dequantize` turns NF4
layers back into plain ``nn.Linear`` layers of a chosen dtype first (what merge and export do).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = ("nf4",)


def _torchao_nf4() -> Any:
    try:
        from torchao.quantization.quantize_.workflows.nf4 import nf4_tensor
    except ModuleNotFoundError:
        raise ModuleNotFoundError("quantize: nf4 needs torchao; `pip install torchao` brings it.") from None
    return nf4_tensor


def resolve_dtype(name: str, device_type: str) -> torch.dtype:
    """``auto``: bfloat16 on a CUDA GPU that has it, float32 elsewhere (a CPU runs bf16 matmuls no
    faster than fp32, and fp32 keeps CPU results comparable with earlier runs)."""
    if name == "auto":
        if device_type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return DTYPES[name]


class NF4Linear(nn.Linear):
    """A frozen linear layer whose weight is stored in NF4 (see the module docstring)."""

    def __init__(self, linear: nn.Linear) -> None:
        nn.Module.__init__(self)
        nf4 = _torchao_nf4()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        # NF4 dequantizes into the dtype it was built from; fp32 scales cost nothing worth saving
        blocks = weight.numel() // 64
        scaler_block = next(size for size in (256, 128, 64, 32, 16, 8, 4, 2, 1) if blocks % size == 0)
        self.weight = nn.Parameter(nf4.to_nf4(weight.to(torch.bfloat16), 64, scaler_block), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _torchao_nf4().linear_nf4(input=x, weight=self.weight)
        return out if self.bias is None else out + self.bias.to(out.dtype)


def quantize_nf4(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` but the output head by an :class:`NF4Linear` (those
    whose size is a multiple of NF4's 64-weight block: every projection of common LLMs); returns
    how many were replaced."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if type(module) is nn.Linear and module is not head and module.weight.numel() % 64 == 0
    ]
    for name, module in targets:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, NF4Linear(module))
    return len(targets)


def is_quantized(weight: torch.Tensor) -> bool:
    return type(weight).__name__ == "NF4Tensor"


@torch.no_grad()
def dequantize(model: nn.Module, dtype: torch.dtype) -> int:
    """Turn every :class:`NF4Linear` of ``model`` (also one wrapped by an adapter) back into a plain
    ``nn.Linear`` of ``dtype``; returns how many."""
    found = [(name, module) for name, module in model.named_modules() if isinstance(module, NF4Linear)]
    for name, module in found:
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
        plain.weight = nn.Parameter(module.weight.to(dtype), requires_grad=False)
        if module.bias is not None:
            plain.bias = nn.Parameter(module.bias.to(dtype), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, plain)
    return len(found)


def frozen_bytes(model: nn.Module, everything: bool = False) -> int:
    """Bytes held by the parameters and buffers that do not train (``everything``: all of them, e.g. a
    base model before adapters are injected and it is frozen), an NF4 weight by its packed size."""
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        if getattr(tensor, "requires_grad", False) and not everything:
            continue
        if is_quantized(tensor):
            total += sum(t.numel() * t.element_size() for t in _inner(tensor))
        else:
            total += tensor.numel() * tensor.element_size()
    return total


def frozen_kinds(model: nn.Module) -> str:
    """The storage of the frozen parameters: ``bfloat16``, ``float32``, ``NF4 + bfloat16``, ..."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    kinds = {"NF4" if is_quantized(p) else str(p.dtype).removeprefix("torch.") for p in frozen}
    return " + ".join(sorted(kinds, key=lambda k: (k != "NF4", k)))


def _inner(tensor: Any) -> list[torch.Tensor]:
    names, _ = tensor.__tensor_flatten__()
    return [getattr(tensor, n) for n in names]

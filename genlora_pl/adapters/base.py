"""The adapter layer every method shares.

An adapter *wraps* an existing layer (``base_layer``) instead of subclassing it, so it can be
injected into any timm or transformers model. For an input ``x`` it computes

    y = base(x) + s * gate * B @ (A @ dropout(x))

without forming the ``m x n`` update ``dW = B @ A``: ``A`` (``r x n``) and ``B`` (``m x r``) are
applied one after the other, which costs ``O((m + n) r)`` per token. Only where ``dW`` is no larger
than ``A`` and ``B`` together (``m n <= r (m + n)``: high ranks on narrow layers) is it formed and
applied in one step, which is then the cheaper of the two. A method only says how
it produces ``A`` and ``B`` (:meth:`AdapterLayer.factors`); merging, the ``gate`` and
``temperature`` buffers and the per-layer-type maths live here.

Supported base layers and what ``m``, ``n`` mean for them:

- ``nn.Linear``: weight ``(m, n)``.
- transformers ``Conv1D`` (GPT-2): weight stored transposed, ``(n, m)``.
- ``nn.Conv2d`` with ``groups=1``: ``n = in_channels * kh * kw``; ``A`` runs as a convolution with
  the base kernel size, stride, padding and dilation, ``B`` as a 1x1 convolution.
"""

from __future__ import annotations

import math
import sys
import zlib
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from genlora_pl.adapters.config import AdapterConfig


def conv1d_class() -> type | None:
    """transformers' ``Conv1D`` if transformers is already imported (a model using it must be)."""
    module = sys.modules.get("transformers.pytorch_utils")
    if module is None and "transformers" in sys.modules:
        import transformers.pytorch_utils as module
    return getattr(module, "Conv1D", None) if module is not None else None


def layer_kind(module: nn.Module) -> str | None:
    """``"linear"``, ``"conv1d"`` or ``"conv2d"`` for a layer an adapter can wrap, else None."""
    if isinstance(module, nn.Linear):
        return "linear"
    conv1d = conv1d_class()
    if conv1d is not None and isinstance(module, conv1d):
        return "conv1d"
    if (
        isinstance(module, nn.Conv2d)
        and module.groups == 1
        and module.padding_mode == "zeros"
        and type(module).forward is nn.Conv2d.forward
    ):
        return "conv2d"
    return None


SUPPORTED = "nn.Linear, transformers Conv1D and plain nn.Conv2d (groups=1, zero padding)"


def check_supported(path: str, module: nn.Module) -> str:
    """The layer kind of ``module``, or a TypeError naming the path and the type."""
    kind = layer_kind(module)
    if kind is None:
        detail = ""
        if isinstance(module, nn.Conv2d) and type(module).forward is not nn.Conv2d.forward:
            # timm's Conv2dSame pads at run time, StdConv2d standardises its weight: an update
            # applied with the layer's static settings would not line up with its output
            detail = " whose own forward pads or transforms the weight at run time"
        elif isinstance(module, nn.Conv2d):
            detail = f" with groups={module.groups}, padding_mode={module.padding_mode!r}"
        raise TypeError(
            f"cannot adapt {path!r}: it is a {type(module).__module__}.{type(module).__name__}{detail}; "
            f"adapters wrap {SUPPORTED}."
        )
    return kind


def layer_dims(module: nn.Module, kind: str) -> tuple[int, int]:
    """``(m, n)``: output size and input size of the layer's weight seen as a matrix."""
    w = module.weight
    if kind == "conv1d":
        return w.shape[1], w.shape[0]
    return w.shape[0], math.prod(w.shape[1:])  # from the shape alone: a 4-bit weight cannot be indexed


def real_device(base_layer: nn.Module) -> torch.device:
    """Where an adapter's own tensors go: beside the base weight, or on the CPU when the base is still
    on the meta device (a large model built empty and filled shard by shard, see
    ``distributed.shard_fsdp2``): adapters are small, and made real they are initialised at once."""
    device = base_layer.weight.device
    return torch.device("cpu") if device.type == "meta" else device


def layer_seed(seed: int, path: str) -> int:
    """A per-layer seed that depends on the layer's name, not on injection order."""
    return (seed * 1_000_003 + zlib.crc32(path.encode())) % (2**63)


class AdapterLayer(nn.Module):
    """Base of every adapter: wraps ``base_layer`` and adds ``s * gate * B @ A``.

    Subclasses create their parameters in ``__init__``, initialise them in
    :meth:`reset_parameters` and return the factors actually used in :meth:`factors`; a method
    with more to show than the spectrum of its update (GenLoRA's centre drift) overrides
    :meth:`diagnostics` and says how to summarise and plot it in the two class variables.
    """

    #: How :meth:`diagnostics` figures reduce over layers into logged scalars:
    #: ``stat -> (name, "mean" | "min" | "max")``, logged as ``adapter/<name>_<group>/<how>``.
    diagnostics_summary: ClassVar[dict[str, tuple[str, str]]] = {}
    #: Alarms: ``stat -> (threshold, what crossing it means)``; the summarised value above the
    #: threshold fires it (a red line on the diagnostics figure, a warning in the fit's summary).
    diagnostics_alarms: ClassVar[dict[str, tuple[float, str]]] = {}
    #: Settings the method adds to an exported PEFT ``LoraConfig`` (DoRA: ``use_dora``).
    peft_config_extra: ClassVar[dict[str, Any]] = {}
    #: The kind of each trainable parameter (``param name -> kind``): the optimizer gives each kind its
    #: own parameter group, whose learning rate ``model.adapter_lr_multipliers`` can scale.
    param_kinds: ClassVar[dict[str, str]] = {}

    def __init__(self, base_layer: nn.Module, config: AdapterConfig, path: str) -> None:
        super().__init__()
        self.kind = check_supported(path, base_layer)
        self.base_layer = base_layer
        self.config = config
        self.path = path
        self.r = config.r
        self.out_features, self.in_features = layer_dims(base_layer, self.kind)
        self.scaling = config.scaling
        # When dW (m x n) is no larger than A and B together, applying it costs fewer FLOPs per token
        # than applying A then B (r >= mn / (m + n): high ranks on narrow layers, e.g. r=128 on a
        # 16 -> 96 channel 1x1 convolution); the O((m + n) r) memory bound still holds.
        self.dense_update = self.out_features * self.in_features <= self.r * (self.out_features + self.in_features)
        self.merged = False
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        device = real_device(base_layer)
        # Annealing knobs; buffers so that checkpoints, DDP and FSDP carry them.
        self.register_buffer("gate", torch.ones((), device=device))
        self.register_buffer("temperature", torch.ones((), device=device))

    # ----------------------------------------------------------------- method interface
    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, B)`` as used by the forward: ``A`` is ``(r, n)``, ``B`` is ``(m, r)``."""
        raise NotImplementedError

    def reset_parameters(self) -> None:
        raise NotImplementedError

    def diagnostics(self) -> dict[str, dict[str, float]]:
        """Method-specific figures by group (GenLoRA: ``{"A": {...}, "B": {...}}``); none by default."""
        return {}

    def generator(self) -> torch.Generator:
        """A CPU generator seeded from the config seed and this layer's path."""
        return torch.Generator().manual_seed(layer_seed(self.config.seed, self.path))

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The method's own trainable parameters (everything outside ``base_layer``)."""
        return {n: p for n, p in self.named_parameters() if not n.startswith("base_layer.")}

    def peft_state(self) -> dict[str, torch.Tensor]:
        """Tensors the method adds to a PEFT export beside ``lora_A`` and ``lora_B``, by PEFT's key
        suffix (DoRA: ``lora_magnitude_vector``); none by default."""
        return {}

    def num_trainable(self) -> int:
        """The number of trainable numbers this layer adds (its share, when a method shares tensors)."""
        return sum(p.numel() for p in self.adapter_parameters().values())

    @classmethod
    def attach(cls, model: nn.Module, layers: dict[str, AdapterLayer]) -> None:
        """Called by ``inject_adapters`` once every layer of this method is in ``model``: a method
        that shares work or tensors across layers (GenLoRA's shape groups) sets that up here."""

    @classmethod
    def detach(cls, model: nn.Module) -> None:
        """Undo :meth:`attach` before the adapters are taken out of ``model``."""

    def parameter_kind(self, name: str) -> str:
        """The kind of adapter parameter ``name`` (``"adapter"`` when the method declares none)."""
        return self.param_kinds.get(name, "adapter")

    # ----------------------------------------------------------------- maths
    @property
    def scale(self) -> torch.Tensor:
        """``s * gate``: what multiplies ``B @ A`` right now."""
        return self.gate * self.scaling

    def delta_matrix(self) -> torch.Tensor:
        """``s * gate * B @ A`` as an ``(m, n)`` fp32 matrix (for merge and analysis only)."""
        a, b = self.factors()
        return (b.float() @ a.float()) * self.scale.float()

    def delta_weight(self) -> torch.Tensor:
        """The update in the base weight's own shape and layout, in fp32."""
        dw = self.delta_matrix()
        if self.kind == "conv1d":
            return dw.T
        return dw.reshape(self.base_layer.weight.shape)

    def forward_factors(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(A, s * gate * B)`` in ``dtype``, as the forward applies them."""
        # The scale multiplies the small B (m x r), not the large output, and the update is added by
        # the matmul itself (addmm): two fewer passes over an activation-sized tensor per layer, which
        # on a CPU made a ViT-S train step 7 % faster for LoRA and GenLoRA alike.
        a, b = self.factors()
        return a.to(dtype), b.to(dtype) * self.scale.to(dtype)

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return y
        a, b = self.forward_factors(x.dtype)
        return self.apply_update(x, y, self.dropout(x), a, b)

    def apply_update(
        self, x: torch.Tensor, y: torch.Tensor, h: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        """The adapted output from the base output ``y``: ``y + B (A h)``, ``h`` the (dropped-out) input
        ``x`` and ``B`` already scaled (:meth:`forward_factors`). A method whose update is not added to
        ``y`` (DoRA rescales it) overrides this, not the forward."""
        if self.dense_update:
            return self.add_update(y, h, b @ a)
        base = self.base_layer
        if self.kind == "conv2d":
            h = F.conv2d(h, a.reshape(self.r, *base.weight.shape[1:]), None, base.stride, base.padding, base.dilation)
            return y + F.conv2d(h, b[:, :, None, None])
        return self.add_update(y, F.linear(h, a), b)

    def add_update(self, y: torch.Tensor, h: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``y + layer(h)`` where the layer applies ``weight`` as the base layer applies its own."""
        if self.kind == "conv2d":
            base = self.base_layer
            return y + F.conv2d(h, weight.reshape(base.weight.shape), None, base.stride, base.padding, base.dilation)
        out = torch.addmm(y.reshape(-1, y.shape[-1]), h.reshape(-1, h.shape[-1]), weight.T)
        return out.view(y.shape)

    # ----------------------------------------------------------------- merging
    @torch.no_grad()
    def merge(self, safe: bool = True) -> None:
        """Add the update into the base weight (in fp32, cast back to the weight's dtype).

        With ``safe`` the merged weight is checked for NaN/Inf first and the base is left as it
        was when the check fails. Merging twice is an error, never a silent double update.
        """
        if self.merged:
            raise RuntimeError(f"adapter {self.path!r} is already merged; unmerge it first.")
        weight = self.base_layer.weight
        merged = weight.float() + self.delta_weight()
        if safe and not torch.isfinite(merged).all():
            raise ValueError(f"refusing to merge adapter {self.path!r}: the merged weight would contain NaN or Inf.")
        weight.copy_(merged.to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update that :meth:`merge` added (same gate and temperature assumed)."""
        if not self.merged:
            raise RuntimeError(f"adapter {self.path!r} is not merged.")
        weight = self.base_layer.weight
        weight.copy_((weight.float() - self.delta_weight()).to(weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return f"{self.config.name}: r={self.r}, in={self.in_features}, out={self.out_features}, kind={self.kind}"

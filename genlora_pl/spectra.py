"""What the adapters learned: spectra of ``dW``, rank measures, method diagnostics, parameter counts.

Nothing here depends on the method: every adapter exposes its factors (``A``, ``B``) and its own
diagnostics (GenLoRA: RBF centre drift), and the maths below works on those.

The singular values of ``dW = s B A`` come without forming ``dW``: with ``B = Q_B R_B`` and
``A^T = Q_A R_A`` (reduced QR), ``dW = s Q_B (R_B R_A^T) Q_A^T`` and the orthonormal factors do not
change singular values, so ``sigma(dW) = s * sigma(R_B R_A^T)``: an ``r x r`` SVD, ``O((m + n) r^2)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from genlora_pl.adapters import AdapterLayer
from genlora_pl.injection import adapter_layers, model_config, modules_to_save


def effective_rank(sigma: torch.Tensor) -> float:
    """Entropy effective rank (Roy & Vetterli 2007) of L1-normalised singular values; 0 for zero."""
    sigma = sigma.double().abs()
    total = sigma.sum()
    if total <= 0:
        return 0.0
    p = sigma / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def stable_rank(sigma: torch.Tensor) -> float:
    """``sum sigma^2 / sigma_max^2``; 0 for the zero matrix."""
    sigma = sigma.double().abs()
    top = sigma.max() if sigma.numel() else torch.tensor(0.0)
    return float((sigma**2).sum() / top**2) if top > 0 else 0.0


def energy_rank(sigma: torch.Tensor, energy: float = 0.9) -> int:
    """Smallest ``k`` whose top-``k`` singular values hold ``energy`` of ``sum sigma^2``."""
    s2 = torch.sort(sigma.double().abs(), descending=True).values ** 2
    total = s2.sum()
    if total <= 0:
        return 0
    cumulative = torch.cumsum(s2, 0) / total
    return int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=cumulative.dtype) - 1e-12).item()) + 1


def factor_singular_values(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Singular values of ``scale * b @ a`` (``a``: r x n, ``b``: m x r) by the QR route, descending."""
    _, r_b = torch.linalg.qr(b.detach().float())  # (min(m, r), r)
    _, r_a = torch.linalg.qr(a.detach().float().T)  # (min(n, r), r)
    return torch.linalg.svdvals(r_b @ r_a.T) * abs(scale)


@dataclass
class LayerSpectrum:
    """Singular values of one layer's ``dW`` and the measures derived from them."""

    singular_values: torch.Tensor
    weight_norm: float

    @property
    def effective_rank(self) -> float:
        return effective_rank(self.singular_values)

    @property
    def stable_rank(self) -> float:
        return stable_rank(self.singular_values)

    @property
    def energy_rank(self) -> int:
        return energy_rank(self.singular_values)

    @property
    def top(self) -> float:
        return float(self.singular_values.max()) if self.singular_values.numel() else 0.0

    @property
    def relative_norm(self) -> float:
        """``||dW||_F / ||W0||_F`` (the Frobenius norm is the l2 norm of the singular values)."""
        return float(self.singular_values.double().norm()) / self.weight_norm if self.weight_norm > 0 else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "effective_rank": self.effective_rank,
            "stable_rank": self.stable_rank,
            "energy_rank": float(self.energy_rank),
            "top_singular_value": self.top,
            "relative_norm": self.relative_norm,
        }


@torch.no_grad()
def layer_spectrum(layer: AdapterLayer) -> LayerSpectrum:
    a, b = layer.factors()
    sigma = factor_singular_values(a, b, float(layer.scale))
    return LayerSpectrum(sigma.cpu(), float(layer.base_layer.weight.detach().float().norm()))


def adapter_spectra(model: nn.Module, only: set[int] | None = None) -> dict[str, LayerSpectrum]:
    """Per adapted layer, the spectrum of its current update ``dW`` (``gate`` included); with ``only``,
    of the layers whose ids it holds."""
    return {name: layer_spectrum(layer) for name, layer in adapter_layers(model).items() if _in(layer, only)}


def _in(layer: nn.Module, only: set[int] | None) -> bool:
    return only is None or id(layer) in only


def adapter_diagnostics(model: nn.Module, only: set[int] | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """The method-specific figures of every adapted layer that has some, by layer name: for GenLoRA
    the RBF centre drift of each side (``{"A": stats, "B": stats}``, see ``GenLoRALayer.diagnostics``);
    with ``only``, of the layers whose ids it holds."""
    out = {}
    for name, layer in adapter_layers(model).items():
        if not _in(layer, only):
            continue
        figures = layer.diagnostics()
        if figures:
            out[name] = figures
    return out


@dataclass
class LayerParams:
    name: str
    kind: str
    out_features: int
    in_features: int
    r: int
    trainable: int
    lora_equivalent: int


@dataclass
class ParameterReport:
    """Trainable parameters per adapted layer beside what a LoRA of the same rank would cost."""

    adapter: str
    layers: list[LayerParams]
    head: int
    total: int

    @property
    def adapter_params(self) -> int:
        return sum(layer.trainable for layer in self.layers)

    @property
    def lora_equivalent(self) -> int:
        return sum(layer.lora_equivalent for layer in self.layers)

    @property
    def trainable(self) -> int:
        return self.adapter_params + self.head

    def __str__(self) -> str:
        return self.table()

    def table(self, max_rows: int | None = None) -> str:
        """One row per adapted layer; above ``max_rows`` layers, one row per kind of layer (block
        numbers folded into ``*``, with the count), so a 30-block LLM is a dozen lines, not 210."""
        rows = [f"{'layer':<48} {'m x n':>13} {'r':>4} {self.adapter:>10} {'LoRA':>10}"]
        entries = [(layer.name, 1, layer) for layer in self.layers]
        if max_rows is not None and len(self.layers) > max_rows:
            kinds: dict[tuple, list[LayerParams]] = {}
            for layer in self.layers:
                key = (re.sub(r"\.\d+\.", ".*.", layer.name), layer.out_features, layer.in_features, layer.r)
                kinds.setdefault(key, []).append(layer)
            entries = [(f"{key[0]} (x{len(group)})", len(group), group[0]) for key, group in kinds.items()]
        for name, count, layer in entries:
            shape = f"{layer.out_features}x{layer.in_features}"
            trainable, lora = layer.trainable * count, layer.lora_equivalent * count
            rows.append(f"{name:<48} {shape:>13} {layer.r:>4} {trainable:>10,} {lora:>10,}")
        rows.append(
            f"{'adapters (' + str(len(self.layers)) + ' layers)':<48} {'':>13} {'':>4} "
            f"{self.adapter_params:>10,} {self.lora_equivalent:>10,}"
        )
        rows.append(f"modules_to_save: {self.head:,}   trainable: {self.trainable:,}   model total: {self.total:,}")
        return "\n".join(rows)


def parameter_report(model: nn.Module) -> ParameterReport:
    """Exact trainable-parameter counts of the adapters and the saved modules."""
    config = model_config(model)
    layers = [
        LayerParams(
            name=name,
            kind=layer.kind,
            out_features=layer.out_features,
            in_features=layer.in_features,
            r=layer.r,
            trainable=layer.num_trainable(),
            lora_equivalent=layer.r * (layer.out_features + layer.in_features),
        )
        for name, layer in adapter_layers(model).items()
    ]
    head = sum(p.numel() for m in modules_to_save(model, config).values() for p in m.parameters())
    return ParameterReport(config.name, layers, head, sum(p.numel() for p in model.parameters()))

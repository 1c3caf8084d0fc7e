"""Spectra by the QR route, rank measures on known matrices, centre drift."""

import math

import pytest
import torch
from torch import nn

from conftest import make_vit, perturb
from genlora_pl import GenLoRAConfig, LoRAConfig, adapter_diagnostics, adapter_spectra, inject_adapters
from genlora_pl.injection import adapter_layers
from genlora_pl.spectra import effective_rank, energy_rank, factor_singular_values, stable_rank


def test_effective_rank_of_known_matrices():
    assert effective_rank(torch.linalg.svdvals(torch.eye(7))) == pytest.approx(7.0)
    low = torch.randn(30, 3) @ torch.randn(3, 20)
    sigma = torch.linalg.svdvals(low)
    assert effective_rank(torch.tensor([2.0, 2.0, 2.0, 0.0])) == pytest.approx(3.0)
    assert 1.0 < effective_rank(sigma) <= 3.0 + 1e-4
    assert effective_rank(torch.zeros(5)) == 0.0
    # L1-normalised: sigma = (3, 1) -> p = (.75, .25)
    expected = math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert effective_rank(torch.tensor([3.0, 1.0])) == pytest.approx(expected)


def test_stable_and_energy_rank():
    assert stable_rank(torch.ones(6)) == pytest.approx(6.0)
    assert stable_rank(torch.tensor([2.0, 1.0])) == pytest.approx(1.25)
    assert stable_rank(torch.zeros(3)) == 0.0
    assert energy_rank(torch.ones(10)) == 9
    assert energy_rank(torch.tensor([10.0, 1.0, 1.0])) == 1
    assert energy_rank(torch.tensor([1.0, 1.0, 0.0])) == 2
    assert energy_rank(torch.zeros(4)) == 0


@pytest.mark.parametrize(("m", "n", "r"), [(64, 48, 8), (5, 40, 8), (40, 6, 8)])
def test_qr_route_equals_full_svd(m, n, r):
    a, b = torch.randn(r, n), torch.randn(m, r)
    full = torch.linalg.svdvals(0.3 * b @ a)[: min(m, n, r)]
    qr = factor_singular_values(a, b, 0.3)[: min(m, n, r)]
    torch.testing.assert_close(qr, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [GenLoRAConfig, LoRAConfig])
def test_adapter_spectra_match_delta_weight(cls):
    model = make_vit()
    inject_adapters(model, cls(r=8, target_modules=["qkv", "fc2"]))
    perturb(model)
    spectra = adapter_spectra(model)
    assert set(spectra) == set(adapter_layers(model))
    for name, layer in adapter_layers(model).items():
        dw = layer.delta_matrix().detach().double()
        sigma = torch.linalg.svdvals(dw)[:8].float()
        torch.testing.assert_close(spectra[name].singular_values, sigma, rtol=1e-4, atol=1e-6)
        rel = float(dw.norm() / layer.base_layer.weight.detach().double().norm())
        assert spectra[name].relative_norm == pytest.approx(rel, rel=1e-4)
        assert spectra[name].top == pytest.approx(float(sigma[0]), rel=1e-4)
        assert 1.0 <= spectra[name].effective_rank <= 8.0


def test_zero_adapter_has_zero_spectrum():
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=8, target_modules=["qkv"]))
    for s in adapter_spectra(model).values():
        assert s.top == 0 and s.effective_rank == 0 and s.relative_norm == 0


def test_generated_update_has_higher_rank_than_equal_budget_lora():
    # the method's promise at initialisation scale: r=32 GenLoRA vs a LoRA with more parameters
    gen = nn.Sequential(nn.Linear(256, 256))
    inject_adapters(gen, GenLoRAConfig(r=32, group_size=2, target_modules=["0"]))
    lora = nn.Sequential(nn.Linear(256, 256))
    inject_adapters(lora, LoRAConfig(r=3, target_modules=["0"]))
    perturb(gen)
    perturb(lora)
    g_params = sum(p.numel() for p in gen.parameters() if p.requires_grad)
    l_params = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert g_params < l_params
    assert adapter_spectra(lora)["0"].effective_rank <= 3 + 1e-6
    assert adapter_spectra(gen)["0"].effective_rank > 2 * 3


def test_adapter_diagnostics_is_zero_at_injection_and_tracks_moves():
    model = make_vit()
    inject_adapters(model, GenLoRAConfig(r=8, group_size=2, target_modules=["qkv"]))
    drift = adapter_diagnostics(model)
    stats = drift["blocks.0.attn.qkv"]["A"]
    assert stats["center_drift_max"] == 0 and stats["latent_drift"] == 0
    assert stats["center_min_distance"] > 0
    assert stats["width_mean"] == pytest.approx(0.35 * 8**0.5, rel=1e-5)
    layer = adapter_layers(model)["blocks.0.attn.qkv"]
    with torch.no_grad():
        layer.centers_A[3] += torch.tensor([3.0, 4.0])
        layer.latent_A.mul_(2.0)
        layer.temperature.fill_(2.0)
    stats = adapter_diagnostics(model)["blocks.0.attn.qkv"]["A"]
    assert stats["center_drift_max"] == pytest.approx(5.0, rel=1e-5)
    assert stats["center_drift_mean"] == pytest.approx(5.0 / 8, rel=1e-5)
    assert stats["latent_drift"] == pytest.approx(1.0, rel=1e-5)
    assert stats["width_mean"] == pytest.approx(0.35 * 8**0.5 / 2, rel=1e-5)
    assert adapter_diagnostics(model)["blocks.0.attn.qkv"]["B"]["center_drift_max"] == 0

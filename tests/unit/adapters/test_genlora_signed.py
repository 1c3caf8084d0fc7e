"""GenLoRA's signed reading: signed latents modulated by RBFs over fixed seeded positions (its rank:
test_genlora.py, beside the bumps reading).

What it must keep of the method (rank r from distinct kernels, B = 0 at injection, the batched
generator equal to the reference in values and gradients, files without the fixed positions) and
what it was made for: fitting a generic direction that the bumps reading cannot."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genlora_pl import GenLoRAConfig, adapter_state_dict, inject_adapters
from genlora_pl.adapters import GenLoRALayer, config_from_dict
from genlora_pl.adapters.genlora import KERNELS, WIDTH_SPREAD, generate_signed, generate_signed_batched


def layer(m=48, n=40, **kw) -> GenLoRALayer:
    return GenLoRALayer(nn.Linear(n, m), GenLoRAConfig(reading="signed", **kw), "blocks.0.fc")


def test_generator_matches_definition():
    lay = layer(r=8, group_size=3, kernel="inverse_quadratic")
    with torch.no_grad():
        lay.temperature.fill_(1.7)
        lay.latent_B.normal_()
    a, b = lay.factors()
    eps = torch.exp(lay.log_widths_A.double()) / 1.7
    dist = torch.cdist(lay.centers_A.double(), lay.positions_A.double())  # (r, n)
    expected = (lay.amps_A.double() @ lay.latent_A.double().T) / (1 + (eps[:, None] * dist) ** 2)
    torch.testing.assert_close(a.double(), expected, rtol=1e-5, atol=1e-6)
    eps_b = torch.exp(lay.log_widths_B.double()) / 1.7
    dist_b = torch.cdist(lay.positions_B.double(), lay.centers_B.double())  # (m, r)
    expected_b = (lay.latent_B.double() @ lay.amps_B.double().T) / (1 + (eps_b * dist_b) ** 2)
    torch.testing.assert_close(b.double(), expected_b, rtol=1e-5, atol=1e-6)


def test_initialisation_follows_the_method():
    lay = layer(m=48, n=40, r=16, group_size=2, width0=0.35)
    # latent_A like LoRA's A (within +-1/sqrt(n)), latent_B zero: B = 0, so the base is unchanged
    assert lay.latent_A.abs().max() <= 1 / math.sqrt(40) and lay.latent_A.std() > 0.5 / math.sqrt(3 * 40)
    assert torch.count_nonzero(lay.latent_B) == 0 and torch.count_nonzero(lay.factors()[1]) == 0
    # widths: the widest kernel at width0 r^(1/g) / sqrt(2g), spread over two decades
    eps = torch.exp(lay.log_widths_A)
    top = 0.35 * 16**0.5 / math.sqrt(4)
    torch.testing.assert_close(eps[[0, -1]], torch.tensor([top, top * WIDTH_SPREAD]))
    assert (eps[1:] < eps[:-1]).all()
    # every centre starts on a fixed position of its side; the positions are buffers, not trained
    d = torch.cdist(lay.centers_A, lay.positions_A, compute_mode="donot_use_mm_for_euclid_dist")
    assert (d.min(dim=1).values == 0).all()
    assert "positions_A" in dict(lay.named_buffers()) and "positions_A" not in lay.state_dict()


def test_gradients_reach_every_tensor_but_the_positions():
    lay = layer(r=8, group_size=2)
    x = torch.randn(5, 40)
    lay(x).pow(2).sum().backward()  # B = 0: its latent gets gradient through A, as LoRA's B does
    assert lay.latent_B.grad.abs().sum() > 0 and lay.amps_A.grad is not None
    with torch.no_grad():
        lay.latent_B.normal_()
    for p in lay.parameters():
        p.grad = None
    lay(x).pow(2).sum().backward()
    for name in ("latent_A", "latent_B", "centers_A", "centers_B", "log_widths_A", "log_widths_B", "amps_A", "amps_B"):
        assert getattr(lay, name).grad.abs().sum() > 0, name
    assert not lay.positions_A.requires_grad


@pytest.mark.parametrize(("kernel", "kernel_norm"), [(k, False) for k in KERNELS] + [("gaussian", True)])
def test_batched_generation_equals_the_reference_in_values_and_gradients(kernel, kernel_norm):
    torch.manual_seed(0)
    L, p, r, g = 3, 37, 8, 2
    positions = torch.randn(L, p, g)
    latent = torch.randn(L, p, g).requires_grad_()
    centers = (positions[:, :r] + 0.05 * torch.randn(L, r, g)).requires_grad_()
    log_widths = (0.3 * torch.randn(L, r)).requires_grad_()
    amps = torch.randn(L, r, g).requires_grad_()
    temperature = torch.tensor([1.0, 1.7, 0.6])
    weight = torch.randn(L, r, p)
    trained = (latent, centers, log_widths, amps)
    (generate_signed_batched(positions, *trained, temperature, kernel, kernel_norm) * weight).sum().backward()
    got = [t.grad.clone() for t in trained]
    for t in trained:
        t.grad = None
    reference = torch.stack(
        [generate_signed(positions[i], latent[i], centers[i], log_widths[i], amps[i], temperature[i], kernel,
                         kernel_norm) for i in range(L)]
    )  # fmt: skip
    (reference * weight).sum().backward()
    for g_batched, t in zip(got, trained, strict=True):  # fp32 rounding, over the whole tensor
        assert float((g_batched - t.grad).norm()) <= 1e-5 * float(t.grad.norm())


def test_positions_come_back_from_the_seed_so_files_round_trip():
    config = GenLoRAConfig(r=8, group_size=2, reading="signed", target_modules=["0", "2"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    inject_adapters(model, config)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    state = adapter_state_dict(model)
    assert not any("positions" in k for k in state)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    inject_adapters(fresh, config)
    fresh.load_state_dict(state, strict=False)
    x = torch.randn(4, 20)
    torch.testing.assert_close(fresh(x), model(x))


def test_files_written_before_the_option_read_as_bumps():
    # an adapter folder or checkpoint of 0.2 has no "reading": it was made with bumps, today's default or not
    old = {"adapter": "genlora", "r": 8, "group_size": 2, "kernel": "gaussian", "width0": 0.35, "center_init": "random"}
    assert config_from_dict(old).reading == "bumps"
    assert config_from_dict({**old, "reading": "signed"}).reading == "signed"


def test_bad_reading_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"reading='signd' is not valid; choose one of signed, bumps, mixed\."):
        GenLoRAConfig(reading="signd")


def fit_rank1(reading: str, steps: int = 300) -> float:
    """Relative residual after Adam fits ``s B A`` to a generic rank-1 (m, n) target (best of 3 rates)."""
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(64, 1, generator=gen) @ torch.randn(1, 48, generator=gen)
    target = target / target.norm()
    best = math.inf
    for lr in (3e-3, 1e-2, 3e-2):
        lay = GenLoRALayer(nn.Linear(48, 64), GenLoRAConfig(r=16, group_size=1, reading=reading), "fc")
        params = [p for n, p in lay.named_parameters() if not n.startswith("base_layer.")]
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            loss = (lay.delta_matrix() - target).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        best = min(best, float((lay.delta_matrix() - target).norm()))
    return best


def test_signed_fits_a_generic_direction_that_bumps_cannot():
    # the reason for the reading (benchmarks/fit.py at 576 x 576: 0.015 against 0.89); here 64 x 48
    signed, bumps = fit_rank1("signed"), fit_rank1("bumps")
    assert signed < 0.1 and bumps > 0.5, (signed, bumps)


def test_diagnostics_leave_out_what_the_reading_makes_meaningless():
    # flat kernels are near-twins by design (no collapse alarm), and B's latent starts at zero (no
    # relative drift): NaN, which the monitor neither logs nor alarms on; the rest is measured
    lay = layer(r=8, group_size=2)
    d = lay.diagnostics()
    assert math.isnan(d["A"]["center_twins"]) and math.isnan(d["B"]["latent_drift"])
    assert d["A"]["latent_drift"] == 0 and d["A"]["center_drift_max"] == 0 and d["A"]["width_min"] > 0


def test_with_flat_kernels_it_is_lora_of_rank_g():
    # amplitudes start with orthonormal columns on both sides, so where every kernel is 1 (a huge
    # temperature flattens them) the update is s * latent_B latent_A^T: LoRA of rank g, LoRA's scale
    lay = layer(m=48, n=40, r=16, group_size=3)
    amps = lay.amps_A.detach()
    torch.testing.assert_close(amps.T @ amps, torch.eye(3), atol=1e-6, rtol=0)
    assert torch.equal(lay.amps_A, lay.amps_B)
    with torch.no_grad():
        lay.latent_B.normal_()
        lay.temperature.fill_(1e6)
    lora = lay.scaling * lay.latent_B.detach() @ lay.latent_A.detach().T
    torch.testing.assert_close(lay.delta_matrix().detach(), lora, rtol=1e-4, atol=1e-6)
    assert torch.linalg.matrix_rank(lay.delta_matrix().detach().double(), rtol=1e-4) == 3


def test_kernel_norm_gives_every_basis_vector_a_unit_rms_kernel():
    plain, normed = layer(m=96, n=80, r=16, group_size=1), layer(m=96, n=80, r=16, group_size=1, kernel_norm=True)
    a, a_n = plain.factors()[0].detach(), normed.factors()[0].detach()
    values = (plain.amps_A @ plain.latent_A.T).detach()  # the same seeded start: only the kernels differ
    kernels, kernels_n = a / values, a_n / values
    rms = kernels_n.pow(2).mean(1).sqrt()
    torch.testing.assert_close(rms, torch.ones(16), rtol=1e-4, atol=0)
    assert kernels.pow(2).mean(1).sqrt().min() < 0.5  # without it the narrow kernels carry little
    with pytest.raises(ValueError, match=r"kernel_norm=True is not valid with reading='bumps'"):
        GenLoRAConfig(kernel_norm=True)


def test_width_spread_sets_the_narrowest_kernel_and_the_rank_of_the_update():
    from genlora_pl.spectra import effective_rank

    ranks = {}
    for spread in (WIDTH_SPREAD, 1.0):
        lay = layer(m=96, n=80, r=16, group_size=1, width_spread=spread)
        eps = torch.exp(lay.log_widths_A)
        top = 0.35 * 16 / math.sqrt(2)
        torch.testing.assert_close(eps[[0, -1]], torch.tensor([top, top * spread]))
        with torch.no_grad():
            lay.latent_B.normal_()  # a random B latent: the update's shape, not its start at zero
        ranks[spread] = effective_rank(torch.linalg.svdvals(lay.delta_matrix().detach().double()))
    # flat kernels dominate the default start (LoRA-like); at 1.0 every kernel is local: a high rank
    assert ranks[WIDTH_SPREAD] < 2.5 and ranks[1.0] > 2 * ranks[WIDTH_SPREAD], ranks


@pytest.mark.parametrize("bad", [0, -0.5, 1.5, float("nan"), True, "wide"])
def test_a_bad_width_spread_is_refused_in_one_sentence(bad):
    with pytest.raises(ValueError, match=r"width_spread=.* is not valid; it must be a number in \(0, 1\]\."):
        GenLoRAConfig(reading="signed", width_spread=bad)
    with pytest.raises(ValueError, match=r"width_spread=0.5 is not valid with reading='bumps'"):
        GenLoRAConfig(width_spread=0.5)


def test_zero_b_amplitudes_starts_at_zero_through_the_amplitudes_and_learns_them_first():
    lat, amp = layer(r=8, group_size=2), layer(r=8, group_size=2, zero_b="amplitudes")
    # the same seeded A side; B = 0 either way, through a different factor
    for name in ("latent_A", "amps_A", "centers_A", "centers_B", "log_widths_B"):
        torch.testing.assert_close(getattr(lat, name), getattr(amp, name))
    assert torch.count_nonzero(lat.latent_B) == 0 and torch.count_nonzero(lat.amps_B) > 0
    assert torch.count_nonzero(amp.amps_B) == 0 and amp.latent_B.abs().max() <= 1 / math.sqrt(40)
    assert amp.latent_B.std() > 0 and torch.count_nonzero(amp.factors()[1]) == 0
    x = torch.randn(5, 40)
    torch.testing.assert_close(amp(x), amp.base_layer(x))
    amp(x).pow(2).sum().backward()
    assert amp.amps_B.grad.abs().sum() > 0 and amp.latent_B.grad.abs().sum() == 0  # its amplitudes move first


@pytest.mark.parametrize("bad", ["amps", "", None])
def test_a_bad_zero_b_is_refused_in_one_sentence(bad):
    with pytest.raises(ValueError, match=r"zero_b=.* is not valid; choose one of latent, amplitudes\."):
        GenLoRAConfig(reading="signed", zero_b=bad)
    with pytest.raises(ValueError, match=r"zero_b='amplitudes' is not valid with reading='bumps'"):
        GenLoRAConfig(zero_b="amplitudes")

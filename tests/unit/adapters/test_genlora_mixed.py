"""GenLoRA's mixed reading: bump rows over a trained position per coordinate (``latent``) beside
signed rows over fixed positions with ``g - 1`` values per coordinate (``signed_latent``).

What it must keep of the method (B = 0 at injection, exact merge, the parameter count, files without
the fixed positions, the grouped forward equal to the layer's own) and what it was made for: the
bump rows' start is exactly ``bumps`` at ``g = 1`` (what memorises facts), the signed rows' exactly
``signed`` at ``g - 1`` (what fits a direction), and together it fits what each part fits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from genlora_pl import GenLoRAConfig, adapter_state_dict, inject_adapters
from genlora_pl.adapters import GenLoRALayer
from genlora_pl.adapters.genlora import generate, generate_signed


def layer(m=48, n=40, reading="mixed", **kw) -> GenLoRALayer:
    return GenLoRALayer(nn.Linear(n, m), GenLoRAConfig(reading=reading, **kw), "blocks.0.fc")


def test_factors_are_the_bump_rows_then_the_signed_rows():
    lay = layer(r=16, group_size=3)
    with torch.no_grad():
        lay.temperature.fill_(1.3)
        lay.signed_latent_B.normal_()  # B's values start at zero: give them something to show
        lay.amps_B.normal_()
    a, b = lay.factors()
    assert a.shape == (16, 40) and b.shape == (48, 16) and lay.config.parts() == (8, 8)
    t = 1.3
    bump_a = generate(lay.latent_A, lay.centers_A, lay.log_widths_A, lay.amps_A, t, "gaussian")
    signed_a = generate_signed(lay.positions_A, lay.signed_latent_A, lay.signed_centers_A, lay.signed_log_widths_A,
                               lay.signed_amps_A, t, "gaussian")  # fmt: skip
    torch.testing.assert_close(a, torch.cat([bump_a, signed_a]))
    bump_b = generate(lay.latent_B, lay.centers_B, lay.log_widths_B, lay.amps_B, t, "gaussian")
    signed_b = generate_signed(lay.positions_B, lay.signed_latent_B, lay.signed_centers_B, lay.signed_log_widths_B,
                               lay.signed_amps_B, t, "gaussian")  # fmt: skip
    torch.testing.assert_close(b, torch.cat([bump_b, signed_b]).T)


@pytest.mark.parametrize("g", [1, 2, 4])
def test_its_generated_a_has_full_rank(g):
    """The nonlinearity is what gives the rank: both parts' rows together are linearly independent (a
    linear generator would give rank 1 for the bump rows and g - 1 for the signed rows)."""
    a, _ = layer(m=48, n=40, r=16, group_size=g).factors()
    assert torch.linalg.matrix_rank(a.detach().double()) == 16


def test_its_parts_start_as_the_two_readings_start():
    mixed, g = layer(r=64, group_size=3), 3
    bumps = layer(reading="bumps", r=32, group_size=1)
    # the bump rows: bumps at g=1 and r=32, draw for draw (points, centres, widths, amplitudes)
    for name in ("latent_A", "latent_B", "centers_A", "centers_B", "log_widths_A", "amps_A", "amps_B"):
        torch.testing.assert_close(getattr(mixed, name), getattr(bumps, name))
    # the signed rows: signed's start at g - 1 over their own fixed positions
    assert mixed.signed_latent_A.shape == (40, g - 1) and mixed.signed_latent_A.abs().max() <= 1 / math.sqrt(40)
    assert torch.count_nonzero(mixed.signed_latent_B) == 0
    amps = mixed.signed_amps_A.detach()
    torch.testing.assert_close(amps.T @ amps, torch.eye(g - 1), atol=1e-6, rtol=0)
    eps = torch.exp(mixed.signed_log_widths_A)
    top = 0.35 * 32 ** (1 / 2) / math.sqrt(2 * 2)
    torch.testing.assert_close(eps[[0, -1]], torch.tensor([top, top * 0.01]))
    assert "positions_A" not in mixed.state_dict() and mixed.positions_A.shape == (40, g - 1)
    # B = 0 through both parts: the injected layer computes what the base does
    x = torch.randn(5, 40)
    torch.testing.assert_close(mixed(x), mixed.base_layer(x))


def test_at_group_size_one_it_is_the_bumps_reading():
    mixed, bumps = layer(r=16, group_size=1), layer(reading="bumps", r=16, group_size=1)
    assert GenLoRAConfig(reading="mixed", r=16, group_size=1).parts() == (16, 0)
    assert not any(n.startswith("signed_") for n, _ in mixed.named_parameters())
    own = {n: p for n, p in mixed.named_parameters() if not n.startswith("base_layer.")}  # (random base weights)
    theirs = {n: p for n, p in bumps.named_parameters() if not n.startswith("base_layer.")}
    assert list(own) == list(theirs) and all(torch.equal(own[n], theirs[n]) for n in own)


@pytest.mark.parametrize(("g", "expected"), [(1, (48 + 40) * 1 + 2 * 16 * 3), (2, 88 * 2 + 2 * 8 * 3 + 2 * 8 * 3),
                                             (4, 88 * 4 + 2 * 8 * 3 + 2 * 8 * 7)])  # fmt: skip
def test_parameter_count_is_what_the_layer_trains(g, expected):
    lay = layer(r=16, group_size=g)
    trained = sum(p.numel() for n, p in lay.named_parameters() if not n.startswith("base_layer."))
    assert lay.config.num_parameters(48, 40) == trained == expected


def test_every_trained_tensor_gets_a_gradient_and_merge_is_exact():
    lay = layer(r=16, group_size=2)
    x = torch.randn(6, 40)
    with torch.no_grad():  # away from the zero start, so every tensor is on the path to the output
        lay.signed_latent_B.normal_()
        lay.amps_B.normal_()
    lay(x).pow(2).sum().backward()
    for name, p in lay.named_parameters():
        if not name.startswith("base_layer."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    with torch.no_grad():
        before = lay(x)
        lay.merge()
        torch.testing.assert_close(lay(x), before, rtol=1e-5, atol=1e-5)


def test_grouped_layers_match_their_own_factors_and_files_round_trip():
    config = GenLoRAConfig(r=8, group_size=2, reading="mixed", target_modules=["0", "2", "4"])
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 30))
    inject_adapters(model, config)  # layers 0 and 4 share a shape: one group generates both
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn_like(p))
    x = torch.randn(4, 20)
    out = model(x)
    for i in (0, 4):  # one group's batched generation gives each layer its own factors
        a, b = model[i].factors()
        expected = model[i].base_layer(x) + model[i].scale * (x @ a.T) @ b.T
        torch.testing.assert_close(model[i](x), expected, rtol=1e-5, atol=1e-5)
    state = adapter_state_dict(model)
    assert "0.signed_amps_A" in state and not any("positions" in k for k in state)
    torch.manual_seed(0)
    fresh = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 30))
    inject_adapters(fresh, config)
    fresh.load_state_dict(state, strict=False)
    torch.testing.assert_close(fresh(x), out)


def test_mixed_fits_a_direction_and_memorises_beyond_lora_of_its_budget():
    """On one layer: a generic rank-1 target, which the bump rows alone cannot fit (their signed rows
    can), and 32 random key -> value pairs, where LoRA of the same budget recalls few."""
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(64, 1, generator=gen) @ torch.randn(1, 48, generator=gen)
    target = target / target.norm()
    keys = torch.randn(48, 32, generator=gen) / math.sqrt(48)
    values = torch.randn(64, 32, generator=gen)
    values = values / values.norm(dim=0)

    def fit(config, loss_of, steps=300, lr=1e-2):
        lay = GenLoRALayer(nn.Linear(48, 64), config, "fc")
        params = [p for n, p in lay.named_parameters() if not n.startswith("base_layer.")]
        opt = torch.optim.Adam(params, lr=lr)
        for _ in range(steps):
            loss = loss_of(lay.delta_matrix())
            opt.zero_grad()
            loss.backward()
            opt.step()
        return lay.delta_matrix().detach()

    mixed = GenLoRAConfig(reading="mixed", r=16, group_size=2)
    direction = fit(mixed, lambda dw: (dw - target).pow(2).sum())
    assert float((direction - target).norm()) < 0.1
    recalled = {}
    for name, config in (("mixed", mixed), ("lora", None)):
        if config is None:
            from genlora_pl.adapters.lora import LoRAConfig, LoRALayer

            lay = LoRALayer(nn.Linear(48, 64), LoRAConfig(r=2), "fc")  # 224 params; mixed: 256
            opt = torch.optim.Adam([p for n, p in lay.named_parameters() if not n.startswith("base_layer.")], lr=1e-2)
            for _ in range(300):
                loss = (lay.delta_matrix() @ keys - values).pow(2).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
            dw = lay.delta_matrix().detach()
        else:
            dw = fit(config, lambda dw: (dw @ keys - values).pow(2).sum())
        recalled[name] = float(((dw @ keys).T @ values).argmax(1).eq(torch.arange(32)).float().mean())
    assert recalled["mixed"] > recalled["lora"] + 0.2, recalled


def test_a_mixed_reading_needs_an_even_rank_from_group_size_two():
    with pytest.raises(ValueError, match=r"^r=7 is not valid with reading='mixed' and group_size=2; give an even r"):
        GenLoRAConfig(reading="mixed", r=7, group_size=2)
    assert GenLoRAConfig(reading="mixed", r=1, group_size=1).parts() == (1, 0)


@pytest.mark.parametrize(("kernel", "h"), [("gaussian", 1), ("gaussian", 3), ("inverse_quadratic", 2),
                                           ("inverse_multiquadric", 1)])  # fmt: skip
def test_batched_generation_equals_the_two_references_in_values_and_gradients(kernel, h):
    from genlora_pl.adapters.genlora import generate_mixed_batched

    torch.manual_seed(0)
    L, p, half = 3, 37, 6
    points = torch.randn(L, p, 1).requires_grad_()
    positions = torch.randn(L, p, h)
    values = torch.randn(L, p, h).requires_grad_()
    centers = (points.detach()[:, :half] + 0.05 * torch.randn(L, half, 1)).requires_grad_()
    signed_centers = (positions[:, :half] + 0.05 * torch.randn(L, half, h)).requires_grad_()
    log_widths, signed_log_widths = (0.3 * torch.randn(L, half)).requires_grad_(), torch.randn(L, half).requires_grad_()
    amps, signed_amps = torch.randn(L, half).requires_grad_(), torch.randn(L, half, h).requires_grad_()
    temperature = torch.tensor([1.0, 1.7, 0.6])
    weight = torch.randn(L, 2 * half, p)
    trained = (points, values, centers, signed_centers, log_widths, signed_log_widths, amps, signed_amps)
    out = generate_mixed_batched(points, centers, log_widths, amps, positions, values, signed_centers,
                                 signed_log_widths, signed_amps, temperature, kernel)  # fmt: skip
    (out * weight).sum().backward()
    got = [t.grad.clone() for t in trained]
    for t in trained:
        t.grad = None
    reference = torch.stack([
        torch.cat([generate(points[i], centers[i], log_widths[i], amps[i], temperature[i], kernel),
                   generate_signed(positions[i], values[i], signed_centers[i], signed_log_widths[i], signed_amps[i],
                                   temperature[i], kernel)])
        for i in range(L)
    ])  # fmt: skip
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-6)
    (reference * weight).sum().backward()
    for g_batched, t in zip(got, trained, strict=True):  # fp32 rounding, over the whole tensor
        assert float((g_batched - t.grad).norm()) <= 1e-5 * float(t.grad.norm())

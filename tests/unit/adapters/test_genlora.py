"""The GenLoRA generator: rank, parameter count, kernels, numerics, cost of a forward."""

import math

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from genlora_pl import GenLoRAConfig, LoRAConfig, inject_adapters, parameter_report
from genlora_pl.adapters import GenLoRALayer, LoRALayer
from genlora_pl.adapters import genlora as genlora_module
from genlora_pl.adapters.genlora import KERNELS, generate, rbf
from genlora_pl.spectra import effective_rank


def layer(m=48, n=40, **kw) -> GenLoRALayer:
    return GenLoRALayer(nn.Linear(n, m), GenLoRAConfig(**kw), "blocks.0.fc")


@pytest.mark.parametrize("reading", ["bumps", "signed"])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("g", [1, 2, 4])
def test_generated_A_has_full_rank(kernel, g, reading):
    a, b = layer(r=16, group_size=g, kernel=kernel, reading=reading).factors()
    assert a.shape == (16, 40) and b.shape == (48, 16)
    assert torch.linalg.matrix_rank(a.double()) == 16


def test_generator_matches_definition():
    lay = layer(r=8, group_size=3, kernel="inverse_multiquadric")
    with torch.no_grad():
        lay.temperature.fill_(1.7)
        lay.amps_B.normal_()
    a, b = lay.factors()
    eps = torch.exp(lay.log_widths_A) / 1.7
    dist = torch.cdist(lay.centers_A.double(), lay.latent_A.double())  # (r, n)
    expected = lay.amps_A.double()[:, None] / torch.sqrt(1 + (eps.double()[:, None] * dist) ** 2)
    torch.testing.assert_close(a.double(), expected, rtol=1e-5, atol=1e-6)
    dist_b = torch.cdist(lay.latent_B.double(), lay.centers_B.double())  # (m, r)
    eps_b = torch.exp(lay.log_widths_B.double()) / 1.7
    expected_b = lay.amps_B.double() / torch.sqrt(1 + (eps_b * dist_b) ** 2)
    torch.testing.assert_close(b.double(), expected_b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("m", "n", "r", "g"), [(2304, 768, 32, 2), (48, 40, 8, 1), (10, 7, 16, 4)])
@pytest.mark.parametrize("reading", ["bumps", "signed"])
def test_parameter_count_formula(m, n, r, g, reading):
    model = nn.Sequential(nn.Linear(n, m))
    config = GenLoRAConfig(r=r, group_size=g, reading=reading, target_modules=["0"])
    inject_adapters(model, config)
    report = parameter_report(model)
    assert report.adapter_params == (m + n) * g + 2 * r * ((2 * g + 1) if reading == "signed" else (g + 2))
    assert report.adapter_params == config.num_parameters(m, n)
    assert report.lora_equivalent == r * (m + n)
    assert report.adapter_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_vit_b_qkv_example_from_the_method_notes():
    model = nn.Sequential(nn.Linear(768, 2304))
    inject_adapters(model, GenLoRAConfig(r=32, group_size=2, target_modules=["0"]))
    assert parameter_report(model).adapter_params == 6400


def test_lora_parameter_count():
    model = nn.Sequential(nn.Linear(40, 48))
    inject_adapters(model, LoRAConfig(r=8, target_modules=["0"]))
    assert parameter_report(model).adapter_params == 8 * (48 + 40)


def test_initialisation_follows_the_method():
    lay = layer(r=16, group_size=2, width0=0.35)
    # widths: eps = width0 * r ** (1/g)
    torch.testing.assert_close(torch.exp(lay.log_widths_A), torch.full((16,), 0.35 * 16**0.5))
    # every centre starts on a latent point of its side
    d = torch.cdist(lay.centers_A, lay.latent_A, compute_mode="donot_use_mm_for_euclid_dist")
    assert (d.min(dim=1).values == 0).all()
    # rows of A have the norm of a Kaiming-uniform LoRA row, B starts at zero
    a, b = lay.factors()
    torch.testing.assert_close(a.norm(dim=1), torch.full((16,), 1 / math.sqrt(3)))
    assert torch.count_nonzero(b) == 0


def test_kmeans_centres_start_spread_on_latent_points():
    # g=1 at a real layer's size: random draws leave near-twin centres (closer than 0.1 kernel widths,
    # two rows ~99.7 % correlated); k-means placement leaves none and A starts at a higher rank.
    random, spread = (layer(m=96, n=576, r=32, group_size=1, center_init=c) for c in ("random", "kmeans"))
    assert torch.equal(random.latent_A, spread.latent_A)  # only the centres differ
    for lay in (random, spread):
        d = torch.cdist(lay.centers_A, lay.latent_A, compute_mode="donot_use_mm_for_euclid_dist")
        assert (d.min(dim=1).values == 0).all()  # on latent points either way

    def twins_and_rank(lay):
        eps = torch.exp(lay.log_widths_A[0])
        gaps = torch.cdist(lay.centers_A, lay.centers_A) * eps + torch.eye(32) * 1e9
        rank = effective_rank(torch.linalg.svdvals(lay.factors()[0].detach()))
        return (gaps.min(dim=1).values < 0.1).sum().item(), rank

    (twins_r, rank_r), (twins_k, rank_k) = twins_and_rank(random), twins_and_rank(spread)
    assert twins_r >= 2 and twins_k == 0 and rank_k > rank_r + 2  # measured: 6 twins, 22.3 against 27.5


def test_fewer_points_than_rank_jitters_repeated_centres():
    lay = layer(m=3, n=40, r=16, group_size=2)
    c = lay.centers_B
    assert torch.pdist(c).min() > 0  # jitter separates centres drawn on the same point
    assert torch.cdist(c, lay.latent_B).min(dim=1).values.max() < 0.1


def test_initialisation_is_seeded_per_layer_and_independent_of_global_rng():
    torch.manual_seed(1)
    a1 = layer(r=8, seed=3).latent_A.clone()
    torch.manual_seed(2)
    a2 = layer(r=8, seed=3).latent_A.clone()
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, layer(r=8, seed=4).latent_A)
    other = GenLoRALayer(nn.Linear(40, 48), GenLoRAConfig(r=8, seed=3), "blocks.1.fc")
    assert not torch.equal(a1, other.latent_A)


def test_gaussian_never_returns_subnormals():
    t2 = torch.linspace(0, 200, 20001)
    values = rbf(t2, "gaussian")
    tiny = torch.finfo(torch.float32).tiny
    assert not ((values > 0) & (values < tiny)).any()
    assert values[t2 < 80].min() >= tiny  # the cut happens only where exp(-t^2) would be subnormal
    # and gradients flow where the kernel is alive
    x = torch.tensor([1.0, 90.0], requires_grad=True)
    rbf(x, "gaussian").sum().backward()
    assert x.grad[0] != 0 and x.grad[1] == 0 and torch.isfinite(x.grad).all()


def test_wide_distances_do_not_produce_subnormals_in_factors():
    lay = layer(r=32, group_size=2)
    with torch.no_grad():
        lay.log_widths_A.fill_(math.log(12.0))  # very narrow kernels: t^2 spans the subnormal band
    a, _ = lay.factors()
    tiny = torch.finfo(torch.float32).tiny
    assert not ((a.abs() > 0) & (a.abs() < tiny)).any()


def test_generation_runs_in_fp32_under_bf16_autocast():
    lay = layer(r=8)
    with torch.no_grad():
        lay.amps_B.normal_()
    seen = []
    original = genlora_module.generate_batched

    def spy(*args):
        out = original(*args)
        seen.append(out.dtype)
        return out

    genlora_module.generate_batched = spy
    try:
        x = torch.randn(3, 40)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = lay.factors()
            y = lay(x)
    finally:
        genlora_module.generate_batched = original
    assert a.dtype == torch.float32 and b.dtype == torch.float32
    assert seen and all(d == torch.float32 for d in seen)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    ref = lay(x)
    torch.testing.assert_close(y.float(), ref, rtol=5e-2, atol=5e-2)


def test_bf16_parameters_generate_in_fp32():
    lay = layer(r=8).to(torch.bfloat16)
    a, _ = lay.factors()
    assert a.dtype == torch.float32
    y = lay(torch.randn(2, 40, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


class _Recorder(TorchDispatchMode):
    def __init__(self, ignore: torch.Tensor):
        super().__init__()
        self.ignore = ignore.untyped_storage().data_ptr()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() != self.ignore:
                self.numels.append(t.numel())
        return out


@pytest.mark.parametrize("cls", [GenLoRALayer, LoRALayer])
def test_forward_never_builds_an_m_by_n_matrix(cls):
    cfg = GenLoRAConfig(r=16) if cls is GenLoRALayer else LoRAConfig(r=16)
    lay = cls(nn.Linear(512, 512), cfg, "x")
    lay.base_layer.requires_grad_(False)  # as inject_adapters leaves it
    x = torch.randn(2, 512, requires_grad=True)
    # views of the frozen base weight (the transpose inside addmm) are the only m x n tensors allowed
    with _Recorder(ignore=lay.base_layer.weight) as rec:
        lay(x).sum().backward()
    assert len(rec.numels) > 10  # the recorder saw the forward and the backward
    # the largest tensor is a generated factor, r x max(m, n): O((m + n) r), not m x n
    assert max(rec.numels) <= 2 * 16 * (512 + 512) < 512 * 512, max(rec.numels)


def test_generate_is_differentiable_in_every_parameter():
    lay = layer(r=8)
    with torch.no_grad():
        lay.amps_B.normal_()
    lay(torch.randn(4, 40)).pow(2).sum().backward()
    for name, p in lay.adapter_parameters().items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_temperature_smooths_kernels():
    lay = layer(r=16)
    pts, c = lay.latent_A.detach(), lay.centers_A.detach()
    cold = generate(pts, c, lay.log_widths_A, torch.ones(16), 1.0, "gaussian")
    hot = generate(pts, c, lay.log_widths_A, torch.ones(16), 10.0, "gaussian")
    assert (hot >= cold - 1e-6).all() and hot.mean() > cold.mean()


@pytest.mark.parametrize("cls", [GenLoRALayer, LoRALayer])
def test_initialisation_ignores_the_default_device(cls):
    # Lightning builds models in configure_model under a default-device context (cuda on a GPU);
    # the seeded CPU generator must still work and give the same values.
    cfg = GenLoRAConfig(r=8) if cls is GenLoRALayer else LoRAConfig(r=8)
    reference = cls(nn.Linear(40, 48), cfg, "x").state_dict()
    base = nn.Linear(40, 48)
    with torch.device("meta"):
        layer = cls(base, cfg, "x")
    adapter_keys = [k for k in reference if not k.startswith("base_layer.")]
    assert len(adapter_keys) >= 4
    for key in adapter_keys:
        value = layer.state_dict()[key]
        assert value.device.type == "cpu" and torch.equal(value, reference[key]), key

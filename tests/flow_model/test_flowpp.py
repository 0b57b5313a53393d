"""Flow++ pieces: logistic-mixture coupling, attention conditioning net, variational dequantisation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from flow_model import Glow, GlowConfig, reduce_bits
from flow_model.evaluate import bits_per_image, bound_terms_per_image
from flow_model.glow import to_bins
from flow_model.layers.attention import AttentionNet, GatedAttention
from flow_model.layers.mixture import MixLogisticCoupling
from flow_model.layers.nets import ConvNet
from flow_model.layers.variational import VariationalDequantizer


def perturb(module: torch.nn.Module, std: float, seed: int = 0) -> None:
    """Move every parameter off its (often zero) initial value, so nothing is tested at a trivial point."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def mixture_coupling(channels: int = 6, components: int = 4, std: float = 0.05, seed: int = 0) -> MixLogisticCoupling:
    torch.manual_seed(seed)
    coupling = MixLogisticCoupling(channels, lambda i, o: ConvNet(i, o, 8), components=components)
    coupling(torch.randn(4, channels, 5, 5))  # data-dependent ActNorm init inside the net
    perturb(coupling, std, seed)
    return coupling


def per_sample_jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    out = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.view(1, *xi.shape)).flatten(), xi.flatten())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# -- logistic-mixture coupling ---------------------------------------------------------------------------
def test_mixture_coupling_is_identity_at_init() -> None:
    coupling = MixLogisticCoupling(6, lambda i, o: ConvNet(i, o, 8), components=3)
    x = torch.randn(2, 6, 4, 4) * 3
    y, logdet = coupling(x)
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros(2), atol=1e-4, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_coupling_round_trip(seed: int) -> None:
    coupling = mixture_coupling(seed=seed)
    x = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(10 + seed)) * 1.5
    y, logdet = coupling(x)
    assert (y - x).abs().mean() > 0.1 and logdet.abs().min() > 1.0, "the map must be far from the identity"
    with torch.no_grad():
        x_back = coupling.inverse(y)
    assert (x_back - x).abs().max() <= 1e-5


def test_mixture_coupling_logdet_matches_autograd_jacobian_float64() -> None:
    coupling = mixture_coupling(channels=4, components=3, std=0.1).double()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    _, logdet = coupling(x)
    expected = per_sample_jacobian_logdet(lambda v: coupling(v)[0], x)
    torch.testing.assert_close(logdet, expected, atol=1e-8, rtol=1e-8)


def test_mixture_coupling_inverse_gradient_is_the_inverse_jacobian() -> None:
    coupling = mixture_coupling(channels=4, components=3, std=0.05).double()
    y = torch.randn(1, 4, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    inverse_logdet = per_sample_jacobian_logdet(coupling.inverse, y)
    _, forward_logdet = coupling(coupling.inverse(y))
    torch.testing.assert_close(inverse_logdet, -forward_logdet, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("scale", [1e2, 1e4, 1e8])
def test_mixture_coupling_is_finite_and_monotone_at_extreme_inputs(scale: float) -> None:
    coupling = mixture_coupling(std=0.1)
    sweep = torch.linspace(-scale, scale, 101)
    x = torch.randn(101, 6, 1, 1)
    x[:, 3:] = sweep.view(-1, 1, 1, 1)  # the transformed half sweeps the range; the conditioning half is fixed
    x[:, :3] = x[:1, :3]
    with torch.no_grad():
        y, logdet = coupling(x)
        x_back = coupling.inverse(y)
        far = coupling.inverse(torch.full_like(x, scale))
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    assert torch.isfinite(x_back).all() and torch.isfinite(far).all()
    assert (y[1:, 3:] >= y[:-1, 3:]).all(), "the coupling must be non-decreasing in the transformed half"


def test_mixture_coupling_rejects_zero_components() -> None:
    with pytest.raises(ValueError, match="components"):
        MixLogisticCoupling(4, lambda i, o: ConvNet(i, o, 8), components=0)


# -- attention conditioning net ------------------------------------------------------------------------
def attention_config(**overrides) -> GlowConfig:
    fields = dict(image_size=8, levels=1, depth=1, hidden=8, attention_heads=2, cond_blocks=2, dropout=0.1,
                  cond_net="attention")
    return GlowConfig(**{**fields, **overrides})


def test_attention_net_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = AttentionNet(4, 6, attention_config())
    assert torch.all(net(torch.randn(2, 4, 4, 4)) == 0), "the output layer starts at zero"
    with torch.no_grad():
        net.out.conv.weight.normal_(std=0.1)
    net(torch.randn(2, 4, 4, 4)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {name}"


def test_gated_attention_matches_explicit_softmax_attention() -> None:
    torch.manual_seed(1)
    block = GatedAttention(8, heads=2, dropout=0.0)
    x = torch.randn(2, 8, 3, 4)
    b, c, h, w = x.shape
    d = c // 2
    tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
    qkv = tokens @ block.qkv.weight[:, :, 0, 0].T + block.qkv.bias
    heads = []
    for i in range(2):
        q = qkv[..., i * d : (i + 1) * d]
        k = qkv[..., c + i * d : c + (i + 1) * d]
        v = qkv[..., 2 * c + i * d : 2 * c + (i + 1) * d]
        heads.append(torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), dim=-1) @ v)
    attended = torch.cat(heads, dim=-1)
    gated = F.glu(attended @ block.gate.weight[:, :, 0, 0].T + block.gate.bias, dim=-1)
    expected = F.layer_norm(tokens + gated, (c,), block.norm.norm.weight, block.norm.norm.bias)
    expected = expected.transpose(1, 2).reshape(b, c, h, w)
    torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_attention_is_uniform_on_constant_input() -> None:
    """Equal keys at every position: attention averages equal values, so the output is constant over space."""
    torch.manual_seed(2)
    block = GatedAttention(8, heads=4, dropout=0.0)
    x = torch.randn(1, 8, 1, 1).expand(3, 8, 5, 5)
    attended = block.attend(x)
    torch.testing.assert_close(attended, attended[:, :, :1, :1].expand_as(attended), atol=1e-6, rtol=0)
    v = (block.qkv.weight[16:, :, 0, 0] @ x[0, :, 0, 0] + block.qkv.bias[16:])
    torch.testing.assert_close(attended[0, :, 0, 0], v, atol=1e-5, rtol=1e-5)


# -- variational dequantisation ------------------------------------------------------------------------
def dequant_config(coupling: str = "mixlogistic") -> GlowConfig:
    return GlowConfig(image_size=4, levels=1, depth=1, hidden=8, coupling=coupling, mixture_components=3,
                      dequant="variational", dequant_depth=2, dequant_hidden=8)


@pytest.mark.parametrize("coupling", ["affine", "additive", "mixlogistic"])
def test_variational_log_q_matches_autograd_jacobian_float64(coupling: str) -> None:
    torch.manual_seed(0)
    dequantizer = VariationalDequantizer(dequant_config(coupling))
    bins = torch.randint(0, 32, (4, 3, 2, 2)).float()
    dequantizer(bins)  # data-dependent ActNorm init
    perturb(dequantizer, 0.05)
    dequantizer = dequantizer.double()
    bins = bins.double()[:1]
    eps = torch.randn(1, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    u, log_q = dequantizer.transform(eps, bins)
    jac = torch.autograd.functional.jacobian(lambda e: dequantizer.transform(e.view_as(eps), bins)[0].flatten(),
                                             eps.flatten())
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(eps).sum() - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(log_q, expected.view(1), atol=1e-8, rtol=1e-8)
    assert (u > 0).all() and (u < 1).all()


def test_variational_noise_stays_in_the_unit_interval() -> None:
    torch.manual_seed(0)
    dequantizer = VariationalDequantizer(dequant_config())
    bins = torch.randint(0, 32, (8, 3, 4, 4)).float()
    dequantizer(bins)
    perturb(dequantizer, 0.05)
    u, log_q = dequantizer(bins, torch.Generator().manual_seed(0))
    assert u.shape == bins.shape and (u >= 0).all() and (u < 1).all() and torch.isfinite(log_q).all()
    u_far, log_q_far = dequantizer.transform(torch.full_like(bins, 60.0), bins)  # Φ rounds to 1 out here
    assert (u_far < 1).all() and torch.isfinite(log_q_far).all()


@pytest.mark.parametrize("coupling", ["affine", "mixlogistic"])
def test_a_fresh_dequantiser_is_uniform_noise(coupling: str) -> None:
    """Once its ActNorms are initialised and before any training, q is U[0,1)^D with log q = 0, so a dequantiser
    added to a flow trained with uniform noise starts at that flow's bound (a sigmoid squash would start above)."""
    torch.manual_seed(0)
    dequantizer = VariationalDequantizer(dequant_config(coupling))
    bins = torch.randint(0, 32, (64, 3, 16, 16)).float()
    with torch.no_grad():
        dequantizer(bins)  # data-dependent ActNorm init
        u, log_q = dequantizer(bins, torch.Generator().manual_seed(1))
    dims = bins[0].numel()
    assert abs(log_q.mean().item()) / dims < 1e-3, log_q  # per image it jitters with the ActNorms' batch estimates
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.002
    counts = torch.histc(u, bins=10, min=0.0, max=1.0) / u.numel()  # every tenth of the bin equally likely
    torch.testing.assert_close(counts, torch.full_like(counts, 0.1), atol=0.005, rtol=0)


def test_with_uniform_noise_scores_the_same_flow_without_its_dequantiser() -> None:
    model = Glow(dequant_config("affine"))
    x = torch.randint(0, 256, (6, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    model.initialize(x)
    perturb(model, 0.05)
    model.eval()
    uniform = model.with_uniform_noise()
    assert uniform.config.dequant == "uniform" and not list(uniform.dequantizer.parameters())
    assert not uniform.training
    with torch.no_grad():
        z = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) - 0.5
        for a, b in zip(model.flow_forward(z)[0], uniform.flow_forward(z)[0]):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        bpd = uniform.bits_per_dim(x, torch.Generator().manual_seed(3))
        u = torch.rand(x.shape, generator=torch.Generator().manual_seed(3))
        _, _, logp = model.flow_forward((to_bins(x, 5) + u) / 32 - 0.5)
    c = model.config
    torch.testing.assert_close(bpd, -(logp - c.dims * math.log(32)) / (c.dims * math.log(2)))


def test_bound_terms_split_the_same_bound_into_the_flows_part_and_qs() -> None:
    """Per image, q's term is log q(u | x) / (D ln 2) of the noise the seed draws and the flow's is the rest of the
    one-sample bound: they sum to bits_per_image for the same seed. With uniform noise q's term is 0."""
    model = Glow(dequant_config("affine"))
    x = torch.randint(0, 256, (6, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    model.initialize(x)
    perturb(model, 0.05)
    flow, q = bound_terms_per_image(model, x, batch_size=4, seed=7)
    torch.testing.assert_close(flow + q, bits_per_image(model, x, batch_size=4, seed=7))
    model.eval()
    with torch.no_grad():
        _, log_q = model.dequantizer(to_bins(x[:4], 5), torch.Generator().manual_seed(7))  # the first batch's noise
    torch.testing.assert_close(q[:4], log_q.double() / (model.config.dims * math.log(2)))
    assert (q.abs() > 1e-4).all()  # a perturbed q is not uniform noise
    uniform_flow, uniform_q = bound_terms_per_image(model.with_uniform_noise(), x, batch_size=4, seed=7)
    assert (uniform_q == 0).all()
    torch.testing.assert_close(uniform_flow, bits_per_image(model.with_uniform_noise(), x, batch_size=4, seed=7))


def test_a_learned_dequantiser_model_encodes_at_q_of_eps_zero_and_round_trips_exactly() -> None:
    """encode maps each image at q's image of ε = 0 (deterministic, inside every bin), not at the bin centres,
    which a flow trained with q no longer favours; decode still returns the 5-bit image exactly."""
    model = Glow(dequant_config("affine"))
    x = torch.randint(0, 256, (6, 3, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    model.initialize(x)
    perturb(model, 0.1)
    model.eval()
    bins = to_bins(x, 5)
    with torch.no_grad():
        centre = model.dequantizer.centre(bins)
        at_zero = model.dequantizer.transform(torch.zeros_like(bins), bins)[0]
        assert (at_zero < 0.05).any() and (at_zero > 0.95).any()  # this q's centre reaches both edges of a bin...
        torch.testing.assert_close(centre, at_zero.clamp(0.05, 0.95))  # ...so encode keeps clear of them
        assert (centre - 0.5).abs().max() > 0.4
        latents, bpd = model.encode_with_bpd(x)
        expected, _, logp = model.flow_forward((bins + centre) / 32 - 0.5)
        for a, b in zip(latents, expected):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(bpd, -(logp - 48 * math.log(32)) / (48 * math.log(2)))
        assert all(torch.equal(a, b) for a, b in zip(latents, model.encode(x)))  # deterministic
        assert torch.equal(model.decode(latents), reduce_bits(x, 5))
        uniform = model.with_uniform_noise()
        assert torch.equal(uniform.dequantizer.centre(bins), torch.full_like(bins, 0.5))


def test_importance_sampling_tightens_the_bound_towards_the_discrete_likelihood() -> None:
    """E[log-mean-exp of K weights] rises with K and stays below log P(x), which Monte Carlo gives for D = 4."""
    config = GlowConfig(in_channels=1, image_size=2, levels=1, depth=2, hidden=8, n_bits=3, coupling="mixlogistic",
                        mixture_components=2, dequant="variational", dequant_depth=2, dequant_hidden=8)
    model = Glow(config)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (8, 1, 2, 2), generator=g, dtype=torch.uint8)
    model.initialize(x)
    perturb(model, 0.05)
    model.eval()
    with torch.no_grad():
        estimates = {
            k: torch.stack([model.log_likelihood(x, torch.Generator().manual_seed(s), k) for s in range(8)]).mean(0)
            for k in (1, 4, 16)
        }
        log_p = []
        for b in to_bins(x, config.n_bits):
            u = torch.rand((20_000, 1, 2, 2), generator=g)
            _, _, logp = model.flow_forward((b + u) / config.n_bins - 0.5)
            log_p.append(logp.logsumexp(0) - math.log(len(u)) - config.dims * math.log(config.n_bins))
        log_p = torch.stack(log_p)
    means = {k: v.mean().item() for k, v in estimates.items()}
    assert means[1] < means[4] < means[16], means
    assert (estimates[16] <= log_p + 1e-3).all(), (estimates[16], log_p)


# -- the full model --------------------------------------------------------------------------------------
def test_full_flowpp_model_trains_and_round_trips_exactly(tmp_path) -> None:
    config = GlowConfig(image_size=8, levels=2, depth=2, hidden=8, coupling="mixlogistic", cond_net="attention",
                        dequant="variational", mixture_components=3, attention_heads=2, cond_blocks=1, dropout=0.1,
                        dequant_depth=2, dequant_hidden=8)
    torch.manual_seed(0)
    model = Glow(config)
    x = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model.initialize(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for step in range(6):
        loss = model(x, generator=torch.Generator().manual_seed(step)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(x)), reduce_bits(x, config.n_bits))
        assert torch.equal(model.decode(model.encode(x, standardized=True), standardized=True),
                           reduce_bits(x, config.n_bits))
        model.save_pretrained(tmp_path / "m")
        loaded = Glow.from_pretrained(tmp_path / "m")
        bpd = model.bits_per_dim(x, torch.Generator().manual_seed(0))
        torch.testing.assert_close(loaded.bits_per_dim(x, torch.Generator().manual_seed(0)), bpd)
        samples = loaded.sample(3, temperature=0.7, generator=torch.Generator().manual_seed(0))
    assert samples.dtype == torch.uint8 and samples.shape == (3, 3, 8, 8)

"""Every invertible layer: exact inverse, and a log-determinant equal to the brute-force float64 Jacobian's."""
from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from tests.conftest import jacobian_logdet, mark_initialized, randomize, tiny_config

from flow_model.glow import FlowStep
from flow_model.layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    ConvNet,
    FlowSequential,
    InvConv1x1,
    InvConv1x1LU,
    Permutation,
    Split,
    Squeeze,
    TopPrior,
    gaussian_log_prob,
)

SHAPE = (2, 4, 4, 4)  # batch, channels, height, width: 64 dims per sample keeps the dense Jacobian tiny


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conv_net(in_ch: int, out_ch: int) -> ConvNet:
    return ConvNet(in_ch, out_ch, hidden=8)


def make_layer(name: str, channels: int = SHAPE[1]):
    g = gen(1)
    return {
        "actnorm": lambda: ActNorm(channels),
        "conv1x1_lu": lambda: InvConv1x1LU(channels, g),
        "conv1x1": lambda: InvConv1x1(channels, g),
        "reverse": lambda: Permutation(channels, "reverse"),
        "shuffle": lambda: Permutation(channels, "shuffle", g),
        "affine": lambda: AffineCoupling(channels, conv_net),
        "additive": lambda: AdditiveCoupling(channels, conv_net),
        "squeeze": lambda: Squeeze(),
        "flowstep": lambda: FlowStep(tiny_config(), channels, g),
        "flowstep_additive_conv": lambda: FlowStep(tiny_config(coupling="additive", permutation="conv"), channels, g),
        "sequential": lambda: FlowSequential(ActNorm(channels), InvConv1x1LU(channels, g),
                                             AffineCoupling(channels, conv_net), Permutation(channels, "shuffle", g),
                                             AdditiveCoupling(channels, conv_net)),
    }[name]()


LAYERS = ["actnorm", "conv1x1_lu", "conv1x1", "reverse", "shuffle", "affine", "additive", "squeeze", "flowstep",
          "flowstep_additive_conv", "sequential"]


def nontrivial(layer: torch.nn.Module, seed: int = 2) -> torch.nn.Module:
    return randomize(layer, gen(seed), scale=0.3).double()


@pytest.mark.parametrize("name", LAYERS)
def test_inverse_round_trip(name):
    layer = nontrivial(make_layer(name))
    x = torch.randn(SHAPE, generator=gen(3), dtype=torch.float64)
    y, _ = layer(x)
    if y.shape == x.shape:
        assert not torch.allclose(y, x), "the layer is the identity"
    assert torch.allclose(layer.inverse(y), x, atol=1e-10)


@pytest.mark.parametrize("name", LAYERS)
def test_logdet_matches_brute_force_jacobian(name):
    layer = nontrivial(make_layer(name))
    x = torch.randn(SHAPE, generator=gen(4), dtype=torch.float64)
    _, logdet = layer(x)
    assert logdet.shape == (SHAPE[0],)
    expected = jacobian_logdet(lambda v: layer(v)[0], x)
    assert torch.allclose(logdet, expected, atol=1e-8), (logdet, expected)


@pytest.mark.parametrize("cls", [AffineCoupling, AdditiveCoupling])
def test_coupling_with_odd_channels(cls):
    """An odd channel count splits unevenly; both halves must still be mapped and inverted."""
    layer = nontrivial(cls(3, conv_net))
    x = torch.randn(2, 3, 4, 4, generator=gen(5), dtype=torch.float64)
    y, logdet = layer(x)
    assert torch.allclose(layer.inverse(y), x, atol=1e-10)
    assert torch.allclose(logdet, jacobian_logdet(lambda v: layer(v)[0], x), atol=1e-8)


def test_affine_logdet_differs_per_sample():
    """The coupling's scale depends on the input, so per-sample log-determinants must not be shared."""
    layer = nontrivial(AffineCoupling(4, conv_net))
    _, logdet = layer(torch.randn(SHAPE, generator=gen(6), dtype=torch.float64))
    assert (logdet[0] - logdet[1]).abs() > 1e-6


def test_actnorm_initialises_from_first_batch_only():
    layer = ActNorm(3)
    x = 5 + 3 * torch.randn(64, 3, 4, 4, generator=gen(7))
    y, _ = layer(x)
    assert bool(layer.initialized)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    layer(100 + torch.randn(8, 3, 4, 4, generator=gen(8)))
    assert all(torch.equal(before[k], v) for k, v in layer.state_dict().items())


def test_lu_and_plain_conv_agree_for_the_same_weight():
    lu = randomize(InvConv1x1LU(6, gen(9)), gen(10), scale=0.3)
    plain = InvConv1x1(6)
    with torch.no_grad():
        plain.weight.copy_(lu._weight())
    x = torch.randn(3, 6, 5, 5, generator=gen(11))
    (y_lu, ld_lu), (y_plain, ld_plain) = lu(x), plain(x)
    assert torch.allclose(y_lu, y_plain, atol=1e-6)
    assert torch.allclose(ld_lu, ld_plain, atol=1e-5)
    assert ld_lu.abs().min() > 1e-2, "log|det W| should not be zero for perturbed weights"
    assert torch.allclose(lu.inverse(y_lu), plain.inverse(y_plain), atol=1e-5)


@pytest.mark.parametrize("cls", [InvConv1x1LU, InvConv1x1])
def test_eval_cache_follows_load_state_dict(cls):
    layer, other = cls(4, gen(12)).eval(), randomize(cls(4, gen(13)), gen(14), scale=0.3).eval()
    x = torch.randn(2, 4, 3, 3, generator=gen(15))
    with torch.no_grad():  # the cache is used only without autograd
        stale = layer(x)[0]
        layer.load_state_dict(other.state_dict())
        y, logdet = layer(x)
        assert layer._cache.key is not None
        assert not torch.allclose(stale, y)
        assert torch.allclose(y, other(x)[0]) and torch.allclose(logdet, other(x)[1])
        assert torch.allclose(layer.inverse(y), x, atol=1e-5)


@pytest.mark.parametrize("cls", [InvConv1x1LU, InvConv1x1])
def test_eval_cache_follows_optimizer_step(cls):
    layer = cls(4, gen(16))
    x = torch.randn(2, 4, 3, 3, generator=gen(17))
    layer.eval()
    with torch.no_grad():
        stale_y, stale_logdet = layer(x)
    layer.train()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1)
    y, logdet = layer(x)
    (y.pow(3).sum() + logdet.sum()).backward()
    optimizer.step()
    fresh_y, fresh_logdet = layer(x)  # training mode: computed from the parameters, no cache
    layer.eval()
    with torch.no_grad():
        y, logdet = layer(x)
        assert not torch.allclose(stale_y, fresh_y)
        assert torch.allclose(y, fresh_y) and torch.allclose(logdet, fresh_logdet)
        assert torch.allclose(layer.inverse(y), x, atol=1e-5)


@pytest.mark.parametrize("cls", [InvConv1x1LU, InvConv1x1])
def test_eval_mode_with_autograd_still_gives_weight_gradients(cls):
    layer = cls(4, gen(18)).eval()
    x = torch.randn(2, 4, 3, 3, generator=gen(19))
    with torch.no_grad():
        layer(x)  # fills the cache
    y, logdet = layer(x)
    (y.pow(2).sum() + logdet.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_permutation_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown permutation kind 'rot'"):
        Permutation(4, "rot")


def test_squeeze_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even height and width"):
        Squeeze()(torch.zeros(1, 3, 5, 4))


def test_squeeze_moves_each_2x2_block_into_channels():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    y, _ = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2)
    assert y[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]


def test_gaussian_log_prob_matches_torch_normal():
    g = gen(18)
    mean, log_std = torch.randn(2, 3, 2, 2, generator=g), 0.5 * torch.randn(2, 3, 2, 2, generator=g)
    z = torch.randn(2, 3, 2, 2, generator=g)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(gaussian_log_prob((z - mean) / log_std.exp(), log_std), expected, atol=1e-5)


def test_split_prior_round_trip_and_density():
    """Split + prior: merge(split(h)) == h, and the standardisation z -> eps is inverted by mean + std * eps.

    Its Jacobian (h -> (kept, eps)) has log|det| = -sum(log_std), which is exactly the term gaussian_log_prob
    adds to the standard-normal density; checking it against the brute-force Jacobian pins down the prior's
    contribution to the model's log p(x).
    """
    split = randomize(Split(8), gen(19), scale=0.3).double()
    h = torch.randn(2, 8, 2, 2, generator=gen(20), dtype=torch.float64)
    kept, z = split.split(h)
    assert kept.shape[1] == split.keep_channels and z.shape[1] == split.out_channels
    assert torch.equal(split.merge(kept, z), h)

    def standardize(v: torch.Tensor) -> torch.Tensor:
        k, zz = split.split(v)
        mean, log_std = split.prior_params(k)
        return split.merge(k, (zz - mean) * torch.exp(-log_std))

    mean, log_std = split.prior_params(kept)
    assert log_std.abs().min() > 0 and mean.abs().min() > 0, "the prior should not be the zero init"
    eps = (z - mean) * torch.exp(-log_std)
    assert torch.allclose(mean + torch.exp(log_std) * eps, z, atol=1e-12)
    assert torch.allclose(jacobian_logdet(standardize, h), -log_std.flatten(1).sum(1), atol=1e-8)
    normal = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(gaussian_log_prob(eps, log_std), normal, atol=1e-10)


def test_top_prior_broadcasts_per_position():
    prior = randomize(TopPrior((4, 2, 2)), gen(21))
    mean, log_std = prior.prior_params(3)
    assert mean.shape == (3, 4, 2, 2) and torch.equal(mean[0], mean[2]) and torch.equal(log_std[1], log_std[2])


def test_fresh_affine_coupling_scales_by_sigmoid_2():
    """A fresh coupling's net outputs zero, so every scale is sigmoid(0 + 2): the stable start the docstring claims."""
    layer = AffineCoupling(4, partial(ConvNet, hidden=8))
    mark_initialized(layer)
    x = torch.randn(SHAPE, generator=gen(22))
    y, logdet = layer(x)
    assert torch.allclose(y[:, 2:], x[:, 2:] * torch.sigmoid(torch.tensor(2.0)))
    assert torch.allclose(logdet, torch.full_like(logdet, 2 * 4 * 4 * math.log(torch.sigmoid(torch.tensor(2.0)))))

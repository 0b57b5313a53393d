"""The speed paths compute what the plain layers compute: folded ActNorms, 1x1 convs as GEMMs, channels_last flow."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import nontrivial_model, random_images, randomize, tiny_config

from flow_model.glow import Glow, reduce_bits
from flow_model.layers import ConvNet, ZeroConv2d, tensors_of
from flow_model.layers.conv import conv1x1, is_channels_last
from flow_model.layers.multiscale import squeeze2d, unsqueeze2d

CL = torch.channels_last


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def unfolded(net: ConvNet, x: torch.Tensor) -> torch.Tensor:
    """The net as written in the paper: conv, ActNorm, ReLU, conv, ActNorm, ReLU, conv * exp(3 * log_scale)."""
    h = F.relu(net.norm1.normalize(net.conv1(x)))
    h = F.relu(net.norm2.normalize(net.conv2(h)))
    return net.out.conv(h) * torch.exp(net.out.log_scale * net.out.logscale_factor)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_folded_conv_net_matches_the_unfolded_one_in_value_and_gradient(layout):
    net = randomize(ConvNet(3, 6, hidden=8), gen(0), scale=0.3).double()
    x = torch.randn(2, 3, 5, 5, generator=gen(1), dtype=torch.float64).contiguous(memory_format=layout)
    x.requires_grad_(True)
    y, expected = net(x), unfolded(net, x)
    torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-12)
    g = torch.randn(expected.shape, generator=gen(2), dtype=torch.float64)
    params = [x, *net.parameters()]
    for got, want in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(expected, params, g)):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_conv_net_dropout_drops_the_last_hidden_layer_in_training_only():
    """Inverted dropout on the last hidden layer, with the same draws as the paper's net given the same seed, in
    the folded path and in ActNorm's init path alike; in eval mode the net is the one without dropout."""
    net = randomize(ConvNet(3, 6, hidden=8, dropout=0.5), gen(7), scale=0.3)
    plain = ConvNet(3, 6, hidden=8)
    plain.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 5, 5, generator=gen(8))
    torch.manual_seed(0)
    y = net(x)
    torch.manual_seed(0)
    h = F.relu(net.norm2.normalize(net.conv2(F.relu(net.norm1.normalize(net.conv1(x))))))
    dropped = F.dropout(h, 0.5)
    torch.testing.assert_close(y, net.out(dropped))
    assert 0 < (dropped == 0).double().mean() < 1 and not torch.allclose(y, plain(x))
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), plain.eval()(x))
    fresh = ConvNet(3, 6, hidden=8, dropout=0.5)
    torch.manual_seed(1)
    y = fresh(x)  # the ActNorms initialise on this call
    torch.manual_seed(1)
    torch.testing.assert_close(y, fresh.out(F.dropout(F.relu(fresh.norm2.normalize(fresh.conv2(
        F.relu(fresh.norm1.normalize(fresh.conv1(x)))))), 0.5)))


def test_glow_coupling_nets_take_the_configs_dropout():
    model = nontrivial_model(tiny_config(dropout=0.5))
    plain = Glow(tiny_config())
    plain.load_state_dict(model.state_dict())
    x = random_images(4, model.config)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x, gen(0)), plain.eval()(x, gen(0)))
        assert not torch.allclose(model.train()(x, gen(0)), plain.train()(x, gen(0)))


def test_conv_net_inference_cache_follows_parameter_changes_and_layout():
    net = randomize(ConvNet(3, 6, hidden=8), gen(3), scale=0.3).eval()
    x = torch.randn(2, 3, 4, 4, generator=gen(4))
    with torch.no_grad():
        before = net(x)
        torch.testing.assert_close(net(x.contiguous(memory_format=CL)), before)
        net.norm2.log_scale.add_(0.5)
        net.out.conv.weight.mul_(2.0)
        after = net(x)
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, unfolded(net, x))
        torch.testing.assert_close(net(x.contiguous(memory_format=CL)), after)


def test_conv_net_in_eval_mode_with_autograd_on_still_trains_every_parameter():
    net = randomize(ConvNet(3, 6, hidden=8), gen(5), scale=0.3).eval()
    with torch.no_grad():
        net(torch.randn(1, 3, 4, 4))  # fills the inference cache
    net(torch.randn(2, 3, 4, 4, generator=gen(6))).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_zero_conv_folds_its_scale_into_the_conv():
    layer = randomize(ZeroConv2d(4, 6), gen(7), scale=0.3)
    x = torch.randn(2, 4, 5, 5, generator=gen(8))
    torch.testing.assert_close(layer(x), layer.conv(x) * torch.exp(3 * layer.log_scale))


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
@pytest.mark.parametrize("weight_shape", [(5, 7), (5, 7, 1, 1)])
def test_conv1x1_is_a_1x1_convolution(layout, weight_shape):
    x = torch.randn(2, 7, 3, 4, generator=gen(9)).contiguous(memory_format=layout)
    weight, bias = torch.randn(weight_shape, generator=gen(10)), torch.randn(5, generator=gen(11))
    y = conv1x1(x, weight, bias)
    torch.testing.assert_close(y, F.conv2d(x, weight.reshape(5, 7, 1, 1), bias))
    assert is_channels_last(y) == (layout is CL)
    channel_slice = x.contiguous(memory_format=CL)[:, 2:]  # how a coupling hands half the channels to its net
    half = weight.reshape(5, 7)[:, :5]
    torch.testing.assert_close(conv1x1(channel_slice, half), F.conv2d(channel_slice, half[:, :, None, None]))


def test_squeeze_gives_the_same_values_in_either_layout_and_keeps_channels_last():
    x = torch.randn(2, 3, 8, 4, generator=gen(12))
    x_cl = x.contiguous(memory_format=CL)
    squeezed = squeeze2d(x_cl)
    assert torch.equal(squeezed, squeeze2d(x)) and is_channels_last(squeezed)
    assert torch.equal(unsqueeze2d(squeezed), x) and is_channels_last(unsqueeze2d(squeezed))
    kept = squeezed[:, :6]  # Split keeps a channel slice, which the next level squeezes again
    assert torch.equal(squeeze2d(kept), squeeze2d(squeezed.contiguous()[:, :6]))


def test_flow_gives_the_same_density_latents_and_images_in_either_layout():
    model = nontrivial_model(tiny_config(image_size=16, levels=2))
    images = random_images(3, model.config, seed=13)
    results = {}
    for layout in (torch.contiguous_format, CL):
        model.memory_format = layout
        model.eval()
        with torch.no_grad():
            latents = model.encode(images)
            results[layout] = (model.bits_per_dim(images, generator=gen(14)), latents, model.decode(latents))
        assert all(z.is_contiguous() for z in latents), "encode hands out plain contiguous tensors"
    (bpd_a, z_a, x_a), (bpd_b, z_b, x_b) = results.values()
    torch.testing.assert_close(bpd_a, bpd_b)
    for a, b in zip(z_a, z_b):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.equal(x_b, reduce_bits(images, model.config.n_bits)) and x_b.is_contiguous()
    assert torch.equal(x_a, x_b)


def layerwise_inverse(model, latents, standardized=False):
    """flow_inverse as the layers' own inverses compute it: with autograd on, Glow never uses the frozen inverse."""
    with torch.enable_grad():
        return model.flow_inverse(latents, standardized=standardized).detach()


@pytest.mark.parametrize("overrides", [
    dict(), dict(coupling="additive", permutation="conv"), dict(permutation="reverse"),
    dict(coupling="mixlogistic", mixture_components=2, cond_net="attention", attention_heads=2),
])
def test_frozen_inverse_decodes_what_the_layers_decode(overrides):
    model = nontrivial_model(tiny_config(**overrides), seed=21).eval()
    images = random_images(3, model.config, seed=22)
    with torch.inference_mode():  # the editor's mode: the frozen weights come out as inference tensors
        eps = model.encode(images, standardized=True)
        frozen = model.flow_inverse(eps, standardized=True)
        assert model._frozen.key is not None, "inference without autograd runs the frozen inverse"
    eps = [z.clone() for z in eps]  # normal tensors again, for the autograd reference below
    with torch.no_grad():  # ... and serve plain no_grad callers too
        assert torch.equal(model.decode(eps, standardized=True), reduce_bits(images, model.config.n_bits))
    torch.testing.assert_close(frozen, layerwise_inverse(model, eps, standardized=True), rtol=1e-5, atol=1e-5)


def test_frozen_flow_step_is_one_gemm_equal_to_its_three_inverses_in_float64():
    model = nontrivial_model(tiny_config(), seed=23, scale=0.3).double().eval()
    step = model.levels[0].flow.layers[1]
    norm, mix, coupling = step.layers
    y = torch.randn(2, 12, 4, 4, generator=gen(24), dtype=torch.float64).contiguous(memory_format=CL)
    with torch.no_grad():
        expected = norm.inverse(mix.inverse(coupling.inverse(y)))
        torch.testing.assert_close(step.frozen_inverse(CL)(y), expected, rtol=1e-10, atol=1e-12)


def test_frozen_inverse_follows_in_place_edits_loads_and_layout_changes():
    torch.manual_seed(0)  # nn.Conv2d's default init draws from the global generator
    model = nontrivial_model(tiny_config(), seed=25).eval()
    images = random_images(2, model.config, seed=26)
    latents = model.encode(images)
    with torch.no_grad():
        before = model.flow_inverse(latents)
        step = model.levels[1].flow.layers[2]
        step.layers[0].bias.add_(0.05)  # ActNorm, folded into the GEMM
        step.layers[2].net.conv1.weight.mul_(1.1)  # coupling net, folded into its convs
        edited = model.flow_inverse(latents)
    assert torch.isfinite(edited).all() and not torch.allclose(before, edited)
    torch.testing.assert_close(edited, layerwise_inverse(model, latents), rtol=1e-5, atol=1e-5)

    other = nontrivial_model(tiny_config(), seed=27).eval()
    model.load_state_dict(other.state_dict())
    latents = other.encode(images)
    with torch.no_grad():
        torch.testing.assert_close(model.flow_inverse(latents), other.flow_inverse(latents))
        model.memory_format = torch.contiguous_format
        plain = model.flow_inverse(latents)
    assert model._frozen.key[0] == torch.contiguous_format and not is_channels_last(plain)
    torch.testing.assert_close(plain, layerwise_inverse(model, latents), rtol=1e-5, atol=1e-5)


def test_flow_inverse_with_autograd_trains_every_flow_parameter():
    model = nontrivial_model(tiny_config(), seed=28).eval()
    with torch.no_grad():
        latents = model.encode(random_images(2, model.config, seed=29))
        model.flow_inverse(latents)  # builds the frozen inverse, which must not be what autograd sees
    model.flow_inverse(latents).square().sum().backward()
    flows = [p for level in model.levels for p in level.flow.parameters()]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flows)


def test_uninitialised_conv_net_is_not_frozen_so_its_first_batch_still_initialises_it():
    net = ConvNet(3, 6, hidden=8).eval()
    assert net.frozen(CL) is net
    with torch.no_grad():
        net(torch.randn(4, 3, 5, 5, generator=gen(30)))
    assert bool(net.norm1.initialized) and net.frozen(CL) is not net


def test_tensors_of_finds_every_parameter_and_buffer():
    model = nontrivial_model(tiny_config(), seed=31)
    step = model.levels[0].flow.layers[1]
    found = {id(t) for t in tensors_of(step)}
    assert found == {id(t) for t in [*step.parameters(), *step.buffers()]}
    step.layers[0].bias = torch.nn.Parameter(torch.zeros_like(step.layers[0].bias))  # replaced, not edited
    assert id(step.layers[0].bias) in {id(t) for t in tensors_of(step)}

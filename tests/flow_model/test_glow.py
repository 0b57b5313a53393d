"""The whole model: exact log-density, bits/dim, exact reconstruction, sampling, latents and persistence."""
from __future__ import annotations

import json
import math

import pytest
import torch
from tests.conftest import jacobian_logdet, nontrivial_model, random_images, tiny_config
from safetensors.torch import load_file, save_file

from flow_model import Glow, GlowConfig, reduce_bits
from flow_model.glow import to_bins
from flow_model.layers import ActNorm, InvConv1x1, InvConv1x1LU


def standard_normal_log_prob(eps: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (math.log(2 * math.pi) + eps**2)).flatten(1).sum(1)


@pytest.fixture(scope="module")
def model64() -> Glow:
    """float64, so the brute-force Jacobian comparisons are exact to ~1e-8."""
    return nontrivial_model(tiny_config(image_size=4, levels=2, depth=2), seed=3).double()


def test_log_density_is_the_change_of_variables_formula(model64):
    """log p(x) = log N(eps(x); 0, I) + log|det d eps / dx| over every level's standardised latents at once."""
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 0.5
    _, eps, logp = model64.flow_forward(x)

    def all_eps(v: torch.Tensor) -> torch.Tensor:
        return model64.flatten_latents(model64.flow_forward(v)[1])

    expected = standard_normal_log_prob(model64.flatten_latents(eps)) + jacobian_logdet(all_eps, x)
    assert torch.allclose(logp, expected, atol=1e-7), (logp, expected)


def test_log_density_from_raw_latents_and_hand_computed_priors(model64):
    """The same log p(x) from the Jacobian of x -> raw latents z plus each level's Gaussian prior, evaluated here."""
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5
    latents, _, logp = model64.flow_forward(x)

    def all_z(v: torch.Tensor) -> torch.Tensor:
        return model64.flatten_latents(model64.flow_forward(v)[0])

    first, top = model64.levels
    kept, _ = first.split.split(first.flow(x)[0])
    mean0, log_std0 = first.split.prior_params(kept)
    prior = torch.distributions.Normal(mean0, log_std0.exp()).log_prob(latents[0]).flatten(1).sum(1)
    top_mean, top_log_std = model64.top_prior.mean, model64.top_prior.log_std
    prior = prior + torch.distributions.Normal(top_mean, top_log_std.exp()).log_prob(latents[1]).flatten(1).sum(1)
    assert torch.allclose(logp, prior + jacobian_logdet(all_z, x), atol=1e-7)


def test_bits_per_dim_by_hand(model64):
    config = model64.config
    images = random_images(3, config, seed=2)
    bpd = model64.bits_per_dim(images, generator=torch.Generator().manual_seed(7))
    u = torch.rand(images.shape, generator=torch.Generator().manual_seed(7))  # the dequantiser draws float32 noise
    x_tilde = (to_bins(images, config.n_bits) + u) / config.n_bins - 0.5
    assert x_tilde.min() >= -0.5 and x_tilde.max() < 0.5
    _, _, logp = model64.flow_forward(x_tilde.double())
    dims = 3 * 4 * 4
    expected = -(logp - dims * math.log(config.n_bins)) / (dims * math.log(2))
    assert torch.allclose(bpd, expected, atol=1e-10)
    assert torch.allclose(-model64.log_likelihood(images, torch.Generator().manual_seed(7)) / (dims * math.log(2)), bpd)


def test_importance_samples_tighten_the_bound(model64):
    images = random_images(4, model64.config, seed=3)
    one = model64.bits_per_dim(images, generator=torch.Generator().manual_seed(0))
    many = model64.bits_per_dim(images, generator=torch.Generator().manual_seed(0), importance_samples=16)
    assert many.mean() <= one.mean() + 0.05
    with pytest.raises(ValueError, match="importance_samples"):
        model64.bits_per_dim(images, importance_samples=0)


PARAMETRIZED = [
    dict(),
    dict(n_bits=8),
    dict(coupling="additive", permutation="conv"),
    dict(permutation="shuffle", levels=1, image_size=4),
    dict(permutation="reverse", levels=3),
]


def config_id(overrides: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"


@pytest.mark.parametrize("overrides", PARAMETRIZED, ids=config_id)
def test_decode_encode_is_exact(overrides):
    model = nontrivial_model(tiny_config(**overrides)).eval()
    images = random_images(8, model.config, seed=4)
    with torch.no_grad():
        latents = model.encode(images)
        assert [tuple(z.shape[1:]) for z in latents] == model.latent_shapes
        assert torch.equal(model.decode(latents), reduce_bits(images, model.config.n_bits))
        eps = model.encode(images, standardized=True)
        assert not all(torch.allclose(a, b) for a, b in zip(eps, latents)), "the priors should not be N(0, I)"
        assert torch.equal(model.decode(eps, standardized=True), reduce_bits(images, model.config.n_bits))


def test_reduce_bits_keeps_the_top_bits():
    x = torch.tensor([0, 7, 8, 200, 255], dtype=torch.uint8)
    assert reduce_bits(x, 5).tolist() == [0, 0, 8, 200, 248]
    assert torch.equal(reduce_bits(x, 8), x)


def test_flat_latents_round_trip():
    model = nontrivial_model().eval()
    config = model.config
    assert model.latent_dim == config.in_channels * config.image_size**2
    with torch.no_grad():
        latents = model.encode(random_images(3, config, seed=5))
    flat = model.flatten_latents(latents)
    assert flat.shape == (3, model.latent_dim)
    back = model.unflatten_latents(flat)
    assert all(torch.equal(a, b) for a, b in zip(back, latents))
    slices = model.level_slices()
    assert slices[0].start == 0 and slices[-1].stop == model.latent_dim
    for s, z in zip(slices, latents):
        assert torch.equal(flat[:, s], z.reshape(3, -1))
    assert all(torch.equal(a, b[:1]) for a, b in zip(model.unflatten_latents(flat[0]), latents))
    with pytest.raises(ValueError, match=f"{model.latent_dim} values"):
        model.unflatten_latents(flat[:, :-1])


def test_temperature_zero_gives_the_prior_mean_image():
    model = nontrivial_model().eval()
    with torch.no_grad():
        three = model.sample(3, temperature=0.0, generator=torch.Generator().manual_seed(0))
        one = model.sample(1, temperature=0.0, generator=torch.Generator().manual_seed(1))
        zeros = [torch.zeros(1, *s) for s in model.latent_shapes]
        mean_image = model.decode(zeros, standardized=True)
        warm = model.sample(3, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(three, one.expand(3, -1, -1, -1))
    assert torch.equal(one, mean_image)
    assert not torch.equal(warm[0], warm[1])
    with pytest.raises(ValueError, match="temperature"):
        model.sample(1, temperature=-0.1)


def test_sampling_is_seeded():
    model = nontrivial_model().eval()
    with torch.no_grad():
        a = model.sample(2, 0.7, generator=torch.Generator().manual_seed(5))
        b = model.sample(2, 0.7, generator=torch.Generator().manual_seed(5))
    assert a.dtype == torch.uint8 and torch.equal(a, b)


def test_actnorm_is_not_reinitialised_after_loading(tmp_path):
    model = nontrivial_model()
    model.save_pretrained(tmp_path / "m")
    loaded = Glow.from_pretrained(tmp_path / "m")
    assert all(bool(m.initialized) for m in loaded.modules() if isinstance(m, ActNorm))
    saved = {k: v.clone() for k, v in loaded.state_dict().items()}
    odd = torch.full((4, 3, 8, 8), 250, dtype=torch.uint8)
    odd[:, :, ::2] = 3  # a distribution nothing like the random images the ActNorms saw
    loaded.train()
    with torch.no_grad():
        loaded.bits_per_dim(odd)
        loaded.encode(odd)
    assert all(torch.equal(saved[k], v) for k, v in loaded.state_dict().items())
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    images = random_images(2, model.config, seed=6)
    with torch.no_grad():
        assert all(torch.allclose(a, b) for a, b in zip(loaded.encode(images), model.eval().encode(images)))


def test_save_pretrained_layout_and_fp16(tmp_path):
    model = nontrivial_model()
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    assert sorted(p.name for p in (tmp_path / "half").iterdir()) == ["config.json", "model.safetensors"]
    assert GlowConfig.from_dict(json.loads((tmp_path / "half" / "config.json").read_text())) == model.config
    stored = load_file(str(tmp_path / "half" / "model.safetensors"))
    assert all(v.dtype in (torch.float16, torch.bool, torch.int64) for v in stored.values())
    loaded = Glow.from_pretrained(tmp_path / "half")
    assert all(v.dtype != torch.float16 for v in loaded.state_dict().values())
    for k, v in model.state_dict().items():
        assert torch.allclose(loaded.state_dict()[k].float(), v.float(), rtol=1e-3, atol=1e-3), k


def test_from_pretrained_rejects_bad_directories(tmp_path):
    model = nontrivial_model()
    with pytest.raises(FileNotFoundError, match="not a pretrained model directory"):
        Glow.from_pretrained(tmp_path / "missing")
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    state = load_file(str(weights))

    save_file({k: v for k, v in state.items() if k != "top_prior.mean"}, str(weights))
    with pytest.raises(ValueError, match=r"missing \['top_prior.mean'\]"):
        Glow.from_pretrained(tmp_path / "m")

    state["top_prior.mean"] = torch.full_like(state["top_prior.mean"], float("nan"))
    save_file(state, str(weights))
    with pytest.raises(ValueError, match="non-finite values in \\['top_prior.mean'\\]"):
        Glow.from_pretrained(tmp_path / "m")

    weights.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="cannot read weights"):
        Glow.from_pretrained(tmp_path / "m")

    (tmp_path / "m" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Glow.from_pretrained(tmp_path / "m")

    small = Glow(tiny_config(image_size=4, levels=1))
    small.save_pretrained(tmp_path / "small")
    model.config.save(tmp_path / "small" / "config.json")
    with pytest.raises(ValueError, match="does not match the config"):
        Glow.from_pretrained(tmp_path / "small")


def test_eval_cache_is_refreshed_when_a_model_loads_new_weights():
    model, other = nontrivial_model(seed=0).eval(), nontrivial_model(seed=5).eval()
    images = random_images(2, model.config, seed=7)
    with torch.no_grad():
        before = model.encode(images)
        model.load_state_dict(other.state_dict())
        after = model.encode(images)
        expected = other.encode(images)
    assert any(isinstance(m, (InvConv1x1LU, InvConv1x1)) for m in model.modules())
    assert not torch.allclose(before[0], after[0])
    assert all(torch.allclose(a, b) for a, b in zip(after, expected))
    assert torch.equal(model.decode(after), reduce_bits(images, 5))


def test_images_are_checked():
    model = nontrivial_model()
    with pytest.raises(TypeError, match="uint8"):
        model.encode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"shape \(B, 3, 8, 8\)"):
        model.encode(torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="expected 2 latent tensors"):
        model.decode([torch.zeros(1, *model.latent_shapes[0])])


@pytest.mark.parametrize("field,value", [
    ("image_size", 12), ("image_size", "64"), ("levels", 0), ("levels", 2.0), ("depth", 0), ("hidden", -1),
    ("n_bits", 9), ("n_bits", "5"), ("in_channels", 0), ("in_channels", None), ("coupling", "linear"),
    ("permutation", "lux"), ("cond_net", "mlp"), ("dequant", "gaussian"), ("mixture_components", 0),
    ("mixture_components", "8"), ("attention_heads", 3), ("attention_heads", "4"), ("cond_blocks", 0),
    ("dropout", 1.0), ("dropout", "0.1"), ("dequant_depth", 0), ("dequant_hidden", "32"),
])
def test_config_rejects_invalid_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        GlowConfig(**{field: value})


def test_config_json_round_trip_and_unknown_fields(tmp_path):
    config = tiny_config(coupling="additive")
    config.save(tmp_path / "c.json")
    assert GlowConfig.load(tmp_path / "c.json") == config
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['depht'\]"):
        GlowConfig.from_dict({"depht": 3})
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        GlowConfig.load(tmp_path / "list.json")
    with pytest.raises(FileNotFoundError, match="model config not found"):
        GlowConfig.load(tmp_path / "none.json")

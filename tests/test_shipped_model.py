"""The shipped model in assets/: it loads, reconstructs real faces exactly, and its directions are complete."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from flow_model import Glow, reduce_bits
from flow_model.glow import to_bins
from flow_model.data import load_images, open_dataset, select
from flow_model.evaluate import evaluate_bpd
from app.directions import load_directions

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "celeba64"


@pytest.fixture(scope="module")
def model() -> Glow:
    return Glow.from_pretrained(ASSETS)


def test_shipped_model_loads_small_and_as_documented(model):
    assert (model.config.image_size, model.config.n_bits) == (64, 5)
    assert not model.training
    assert (ASSETS / "model.safetensors").stat().st_size <= 30 * 2**20
    card = (ASSETS / "MODEL_CARD.md").read_text()
    assert "non-commercial" in card and f"{model.num_parameters():,}" in card


def test_decode_encode_reproduces_eight_real_validation_faces_exactly(model, celeba_dir):
    names = json.loads((ASSETS / "split.json").read_text())["val"][:8]
    faces, _ = load_images(select(open_dataset(celeba_dir), names), 64, progress=False)
    assert len(faces) == 8
    with torch.no_grad():
        latents = model.encode(faces)
        assert torch.equal(model.decode(latents), reduce_bits(faces, 5))
        eps = model.encode(faces, standardized=True)
        assert torch.equal(model.decode(eps, standardized=True), reduce_bits(faces, 5))
        bpd = model.bits_per_dim(faces)
    assert torch.all((bpd > 0.5) & (bpd < 3.0)), bpd  # a trained model, not an initialisation


def test_shipped_directions_cover_all_40_attributes(model):
    directions = load_directions(ASSETS / "directions.safetensors")
    assert len(directions.names) == 40 and len(set(directions.names)) == 40
    assert {"Smiling", "Young", "Blond_Hair", "Eyeglasses", "Male", "No_Beard"} <= set(directions.names)
    assert directions.latent_dim == model.latent_dim
    for method in ("mean_diff", "classifier"):
        vectors = directions.vectors[method]
        assert vectors.shape == (40, model.latent_dim) and torch.isfinite(vectors).all()
        assert directions.gram[method].shape == (40, 40)
        assert torch.allclose(torch.diagonal(directions.gram[method]), torch.ones(40), atol=1e-4)
    for name in ("Smiling", "Young", "Male", "Eyeglasses"):
        stats = directions.info[name]["classifier"]
        assert stats["n_pos"] > 0 and stats["n_neg"] > 0
        assert not math.isnan(stats["auc"]) and 0.75 < stats["auc"] <= 1.0, (name, stats)
    assert set(directions.nullspaces) == {"Male", "Young", "Smiling"}
    for name, basis in directions.nullspaces.items():  # what the calibration holds these attributes by
        normal = directions.vector(name, "classifier").double()
        assert 2 <= len(basis) <= 5 and torch.allclose(basis[0].double(), normal / normal.norm(), atol=1e-5)


def test_the_shipped_dequantiser_tightens_the_bound_and_keeps_its_noise_in_each_bin(model, celeba_dir):
    """From release 8 the figures rest on the learned dequantiser: scored with it, the model must beat the same flow
    with uniform noise by far (else the dequantiser is not doing its job), and its noise must stay inside each pixel's
    bin, where the bound is a bound on the discrete likelihood."""
    assert model.config.dequant == "variational"
    names = json.loads((ASSETS / "split.json").read_text())["val"][:16]
    faces, _ = load_images(select(open_dataset(celeba_dir), names), 64, progress=False)
    learned = evaluate_bpd(model, faces)[0]
    uniform = evaluate_bpd(model.with_uniform_noise(), faces)[0]
    assert learned < uniform - 0.1, (learned, uniform)
    with torch.no_grad():
        u, log_q = model.dequantizer(to_bins(faces, 5), torch.Generator().manual_seed(0))
    assert (u >= 0).all() and (u < 1).all() and torch.isfinite(log_q).all()


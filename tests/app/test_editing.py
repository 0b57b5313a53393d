"""The editing service on its own (no Gradio): exact originals, linear edits, disentangling, interpolation."""
from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from tests.editor_support import random_directions
from app.service import (SLIDERS, EditorService, animated_gif, fit_mean_difference, lerp, orthogonalize, slerp,
                         span_basis)
from flow_model.glow import reduce_bits
from flow_model.imaging import ImageError


@pytest.fixture(scope="module")
def faces(service, photos):
    return [service.face_from_image(p) for p in photos[:2]]


def test_all_sliders_at_zero_return_the_original_exactly(service, photos):
    x, crop, _ = service.prepare(photos[0])
    face = service.encode(x, crop)
    assert torch.equal(face.image, reduce_bits(x, service.model.config.n_bits))
    zeros = {s.label: 0.0 for s in SLIDERS}
    for keep, levels in [((), None), (("Male", "Age"), (1,))]:
        assert torch.equal(service.edit(face, zeros, keep=keep, levels=levels).image, face.image)
        assert torch.equal(service.edit_latent(face.latent, zeros, keep=keep, levels=levels), face.latent)
    edited = service.edit(face, {**zeros, "Smiling": 1.0})
    assert not torch.equal(edited.image, face.image)
    assert (edited.strength, edited.note) == (1.0, "")


def test_an_edit_too_far_to_decode_is_shown_at_the_largest_strength_that_decodes(service, faces):
    face = faces[0]
    value = 60.0
    edited = service.edit(face, {"Smiling": value})
    assert 0 < edited.strength < 1 and f"{edited.strength:.0%}" in edited.note
    delta = service.edit_latent(face.latent, {"Smiling": value}) - face.latent
    steps = torch.tensor([edited.strength, edited.strength + 1 / 16, 1.0])
    images, ok = service.decode_checked(face.latent + steps[:, None] * delta)
    assert ok.tolist() == [True, False, False]
    assert torch.equal(edited.image, service.model.quantize(images[0]))


def test_a_diverged_decode_is_flagged(service, faces):
    latents = faces[0].latent.repeat(3, 1)
    latents[1, 5] = float("nan")
    latents[2] *= 1e4
    _, ok = service.decode_checked(latents)
    assert ok.tolist() == [True, False, False]


def test_one_pass_encode_matches_the_model(service, faces):
    face = faces[0]
    x = face.image.unsqueeze(0)
    with torch.no_grad():
        expected = service.model.flatten_latents(service.model.encode(x, standardized=True))[0]
        noisy_bpd = service.model.bits_per_dim(x, generator=torch.Generator().manual_seed(0)).item()
    torch.testing.assert_close(face.latent, expected)
    assert abs(face.bpd - noisy_bpd) < 0.1


def test_an_edit_is_linear_in_the_slider_value(service, faces):
    z = faces[0].latent
    for keep, levels in [((), None), (("Male",), (1,))]:
        def delta(edits):
            return service.edit_latent(z, edits, keep=keep, levels=levels) - z

        one = delta({"Smiling": 0.7})
        torch.testing.assert_close(delta({"Smiling": 1.4}), 2 * one, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(delta({"Smiling": -0.7}), -one, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(delta({"Smiling": 0.7, "Bangs": -0.3}), one + delta({"Bangs": -0.3}),
                                   rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(service.vector("Age"), -2.0 * service.vector("Young"))  # reversed and scaled
    torch.testing.assert_close(service.vector("Beard"), -1.5 * service.vector("No_Beard"))
    torch.testing.assert_close(service.vector("Blond hair"), service.vector("Blond_Hair"))


def test_a_disentangled_direction_is_orthogonal_to_the_kept_ones(service, faces):
    kept = ["Male", "Age", "Eyeglasses"]
    plain = service.vector("Smiling")
    (v,) = service.edit_vectors(["Smiling"], keep=kept)
    assert float(v.norm()) == pytest.approx(float(plain.norm()), rel=1e-5)
    assert 1 - torch.cosine_similarity(v, plain, dim=0) > 1e-3  # it really changed
    for k in kept:
        assert abs(v @ service.vector(k)) < 1e-5 * v.norm() * service.vector(k).norm()
    # restricted to the coarse level, the applied change is zero elsewhere and still orthogonal to what is kept
    z = faces[0].latent
    delta = service.edit_latent(z, {"Smiling": 1.0, "Bangs": 0.5}, keep=kept, levels=(1,)) - z
    fine = service.model.level_slices()[0]
    assert torch.equal(delta[fine], torch.zeros_like(delta[fine]))
    for k in kept:
        assert abs(delta @ service.vector(k)) < 1e-5 * delta.norm() * service.vector(k).norm()


def _within_gender_service(service) -> EditorService:
    """The tiny service with within-gender differences added to its random directions (Male's own the fallback)."""
    d = service.directions
    g = torch.Generator().manual_seed(5)
    within = {k: torch.randn(len(d.names), d.latent_dim, generator=g) * 0.3 for k in ("pos", "neg")}
    info = {n: {**v, "within_gender": {"fallback": n == "Male"}} for n, v in d.info.items()}
    reader = {"attribute": "Male", "coef": 0.5, "intercept": 0.0}
    return EditorService(service.model, dataclasses.replace(d, within_gender=within, gender_reader=reader, info=info))


def test_a_within_gender_edit_is_each_faces_own_and_held_by_the_mean_differences(service, faces):
    within = _within_gender_service(service)
    assert "within_gender" in within.method_labels() and "within_gender" not in service.method_labels()
    z = torch.stack([faces[0].latent, faces[1].latent])
    kept = ["Male", "Age"]
    (v,) = within.edit_vectors(["Smiling"], method="within_gender", keep=kept, latent=z[0])
    raw = within.vector("Smiling", "within_gender", latent=z[0])
    p = within.directions.p_gender(z[0])
    j = within.attributes.index("Smiling")
    own = p * within.directions.within_gender["pos"][j] + (1 - p) * within.directions.within_gender["neg"][j]
    assert torch.allclose(raw, within.slider("Smiling").scale_for("within_gender") * own)
    assert float(v.norm()) == pytest.approx(float(raw.norm()), rel=1e-5)
    for k in kept:  # held by the kept attributes' mean differences, the same subspace for every face
        u = within.vector(k, "mean_diff")
        assert abs(v @ u) < 1e-5 * v.norm() * u.norm()
    both = within.edit_vectors(["Smiling", "Bangs"], method="within_gender", keep=kept, latent=z)
    assert both.shape == (2, 2, within.model.latent_dim) and torch.allclose(both[0, 0], v, atol=1e-6)
    assert not torch.allclose(both[0, 0], both[0, 1], atol=1e-3)  # two faces, two gender readings, two edits
    delta = within.edit_latent(z[1], {"Smiling": 0.5, "Bangs": -1.0}, method="within_gender", keep=kept) - z[1]
    assert torch.allclose(delta, 0.5 * both[0, 1] - both[1, 1], atol=1e-5)
    with pytest.raises(KeyError, match="no within-gender differences"):
        service.edit_latent(z[0], {"Smiling": 1.0}, method="within_gender")


def test_orthogonalize_drops_a_vector_inside_the_kept_span():
    g = torch.Generator().manual_seed(0)
    kept = torch.randn(2, 50, generator=g)
    inside = (0.3 * kept[0] - 2 * kept[1])[None]
    assert orthogonalize(inside, kept).abs().max() == 0


def test_orthogonalize_holds_every_kept_direction_when_some_repeat():
    """An attribute held twice (the user's Age, the calibration's Young) repeats a row before another kept one:
    the result must still be orthogonal to all of them and keep its norm."""
    g = torch.Generator().manual_seed(0)
    a, b, v = torch.randn(3, 50, generator=g, dtype=torch.float64)
    out = orthogonalize(v[None], torch.stack([a, -2 * a, b]))[0]
    assert abs(float(out @ a)) < 1e-9 * float(a.norm()) and abs(float(out @ b)) < 1e-9 * float(b.norm())
    assert float(out.norm()) == pytest.approx(float(v.norm()))


def test_interpolation_endpoints_equal_the_two_faces(service, faces):
    a, b = faces
    for spherical in (False, True):
        frames = service.interpolate(a.latent, b.latent, 6, spherical=spherical)
        assert frames.shape == (6, *a.image.shape)
        assert torch.equal(frames[0], a.image) and torch.equal(frames[-1], b.image)
        assert not torch.equal(frames[2], a.image) and not torch.equal(frames[2], b.image)
    path = slerp(a.latent, b.latent, 5)
    norms = path.norm(dim=1)
    torch.testing.assert_close(norms, torch.linspace(float(a.latent.norm()), float(b.latent.norm()), 5),
                               rtol=1e-5, atol=1e-4)
    assert (lerp(a.latent, b.latent, 5)[2] - (a.latent + b.latent) / 2).abs().max() < 1e-5
    with pytest.raises(ValueError, match="frames"):
        service.interpolate(a.latent, b.latent, 1)


def test_samples_follow_seed_and_temperature(service):
    first, again = service.sample(4, 0.7, seed=3), service.sample(4, 0.7, seed=3)
    assert torch.equal(first, again)
    assert not torch.equal(first, service.sample(4, 0.7, seed=4))
    mean_faces = service.sample(3, 0.0, seed=0)
    assert torch.equal(mean_faces[0], mean_faces[1])
    with pytest.raises(ValueError, match="temperature"):
        service.sample(2, 1.5)


def in_span(v: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The part of v inside span(basis) (orthonormal columns)."""
    return basis @ (basis.T @ v)


def test_a_custom_direction_separates_its_examples_inside_the_built_in_span(service):
    g = torch.Generator().manual_seed(0)
    d = service.model.latent_dim
    basis = service.custom_basis
    assert basis.shape == (d, 40)  # the 40 random classifier directions
    torch.testing.assert_close(basis.T @ basis, torch.eye(40), atol=1e-5, rtol=0)
    shift = in_span(torch.randn(d, generator=g), basis)
    shift *= 8.0 / shift.norm()
    positives, negatives = torch.randn(6, d, generator=g) + shift, torch.randn(6, d, generator=g)
    v = service.fit_direction(positives, negatives)
    torch.testing.assert_close(in_span(v, basis), v, atol=1e-4, rtol=0)  # a vector of the full latent, in the span
    unit = v / v.norm()
    gap = (positives @ unit).mean() - (negatives @ unit).mean()
    assert gap == pytest.approx(float(v.norm()), rel=1e-4)  # calibrated: +1 moves by the groups' gap
    assert torch.cosine_similarity(v, shift, dim=0) > 0.3
    face_latent = torch.zeros(d)
    moved = service.edit_latent(face_latent, {"Freckles": 1.0}, custom={"Freckles": v})
    torch.testing.assert_close(moved, v)
    with pytest.raises(ValueError, match="at least 3"):
        service.fit_direction(positives[:2], negatives)


def test_without_built_in_directions_a_custom_direction_is_fitted_on_the_coarsest_level(service):
    bare = EditorService(service.model)
    assert bare.custom_basis is None
    g = torch.Generator().manual_seed(2)
    d = bare.model.latent_dim
    coarse = bare.model.level_slices()[-1]
    shift = torch.zeros(d)
    shift[coarse] = 0.5
    v = bare.fit_direction(torch.randn(6, d, generator=g) + shift, torch.randn(6, d, generator=g))
    assert v.shape == (d,) and v[coarse].norm() > 0
    outside = torch.ones(d, dtype=torch.bool)
    outside[coarse] = False
    assert torch.count_nonzero(v[outside]) == 0
    assert torch.cosine_similarity(v, shift, dim=0) > 0.5


def test_a_planted_direction_is_recovered_in_its_subspace_but_not_in_the_whole_latent():
    """A dozen faces in 3,000 dimensions: the noise of the class means swamps the property in the whole latent,
    while within a 10-dimensional subspace that holds it the same faces find it and it holds on new faces."""
    g = torch.Generator().manual_seed(3)
    d, n, n_test = 3000, 6, 200
    basis = span_basis(torch.randn(10, d, generator=g))
    planted = basis @ torch.randn(10, generator=g)
    planted /= planted.norm()

    def faces(count: int, side: float) -> torch.Tensor:
        return torch.randn(count, d, generator=g) + side * 1.5 * planted

    pos, neg = faces(n, 1.0), faces(n, -1.0)
    test = torch.cat([faces(n_test, 1.0), faces(n_test, -1.0)])
    labels = np.r_[np.ones(n_test), np.zeros(n_test)]
    sub, full = fit_mean_difference(pos, neg, basis=basis), fit_mean_difference(pos, neg)
    torch.testing.assert_close(in_span(sub, basis), sub, atol=1e-4, rtol=0)
    assert torch.cosine_similarity(sub, planted, dim=0) > 0.7  # 0.88 measured
    assert torch.cosine_similarity(full, planted, dim=0) < 0.3  # 0.08
    auc_sub, auc_full = (roc_auc_score(labels, (test @ v).numpy()) for v in (sub, full))
    assert auc_sub > 0.9 and auc_full < 0.7 and auc_sub - auc_full > 0.2  # 0.97 and 0.55 measured


def test_span_basis_is_orthonormal_and_drops_dependent_rows():
    g = torch.Generator().manual_seed(4)
    rows = torch.randn(3, 50, generator=g)
    basis = span_basis(torch.cat([rows, rows[:1] + 2 * rows[1:2]]))
    assert basis.shape == (50, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(in_span(rows.T, basis), rows.T, atol=1e-5, rtol=0)


def test_a_custom_direction_from_photos_skips_unusable_ones(service, photos, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a photo")
    fitted = service.fit_custom_direction([*photos[:3], junk], photos[3:])
    assert (fitted.n_with, fitted.n_without) == (3, 3)
    assert fitted.skipped and fitted.skipped[0].startswith("junk.jpg: ")
    assert torch.isfinite(fitted.vector).all() and fitted.vector.norm() > 0
    with pytest.raises(ValueError, match="at least 3 .* after skipping 1: junk.jpg"):
        service.fit_custom_direction([photos[0], photos[1], junk], photos[3:])
    with pytest.raises(ValueError, match="cannot be told apart"):
        service.fit_custom_direction(photos[:3], photos[:3])


def test_model_size_images_are_used_unaligned(service):
    face = service.sample(1, 0.7, seed=1)[0]
    x, _, notes = service.prepare(Image.fromarray(face.permute(1, 2, 0).numpy()))
    assert torch.equal(x, face) and notes == []
    assert torch.equal(service.encode(x).image, face)


def test_bad_inputs_and_keys_get_clear_errors(service, faces):
    with pytest.raises(ImageError, match="only 20x20 pixels"):
        service.prepare(Image.new("RGB", (20, 20)))
    with pytest.raises(KeyError, match="unknown edit 'Wings'"):
        service.edit_latent(faces[0].latent, {"Wings": 1.0})
    with pytest.raises(ValueError, match="finite"):
        service.edit_latent(faces[0].latent, {"Smiling": float("nan")})
    with pytest.raises(ValueError, match="levels"):
        service.edit_latent(faces[0].latent, {"Smiling": 1.0}, levels=(5,))
    with pytest.raises(ValueError, match="different model"):
        EditorService(service.model, random_directions(service.attributes, 10))


def test_an_unusual_image_gets_an_out_of_distribution_note(service, faces):
    assert faces[0].notes == []
    g = torch.Generator().manual_seed(0)
    size = service.image_size
    noise = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
    face = service.encode(noise)
    assert face.bpd > service.bpd_range.p99
    assert any("far above" in note for note in face.notes)


def test_gif_plays_forward_and_back():
    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(4)]
    gif = Image.open(io.BytesIO(animated_gif(frames)))
    assert gif.n_frames == 6 and gif.info["loop"] == 0

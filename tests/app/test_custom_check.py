"""Custom sliders that say whether they are real: the cross-validation arithmetic on cases with known answers, the
measures through the tiny model, progress per photo, a check (deadline, cancel) that stops the fit between photos,
and the UI's message with the verdict."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from app.classifier import AttributeClassifier, ClassifierConfig
from app.custom_check import CustomCheck, check_custom_slider, cross_validate, fold_of
from app.limits import Deadline, LimitError
from app.ui import CANCELLED, EditorUI


@pytest.fixture(scope="module")
def fitted(service, photos):
    return service.fit_custom_direction(photos[:3], photos[3:])


def on_axis(values: list[float], dim: int = 3) -> torch.Tensor:
    """Latents whose projection on the first axis is each value."""
    x = torch.zeros(len(values), dim)
    x[:, 0] = torch.tensor(values)
    return x


def first_axis(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """A 'fit' that ignores its data: the first axis, gap 1."""
    return torch.eye(pos.shape[1])[0]


# -- the arithmetic ------------------------------------------------------------------------------------------
def test_folds_hold_out_each_side_round_robin():
    assert fold_of(7, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_held_out_auc_on_hand_computed_cases():
    # negatives mirror positives, so every fold's threshold (midway between its training groups' means) is 0 and
    # the held-out scores are the projections themselves
    pos = [3.0, 2.0, 1.0, -1.0]
    cv = cross_validate(on_axis(pos), on_axis([-v for v in pos]), first_axis, k=4)
    np.testing.assert_allclose(cv.thresholds, 0.0, atol=1e-12)
    np.testing.assert_allclose(cv.scores, pos + [-v for v in pos])
    assert cv.folds.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    # positives beat 4 + 4 + 3.5 + 2.5 of the 16 pairs (ties count half)
    assert cv.auc == pytest.approx(14 / 16)

    # labels that carry nothing: both sides hold the same values
    same = [3.0, 1.0, -1.0, -3.0]
    assert cross_validate(on_axis(same), on_axis([-v for v in same]), first_axis, k=4).auc == pytest.approx(0.5)


def test_a_separable_property_is_found_on_faces_the_fit_never_saw(service):
    g = torch.Generator().manual_seed(0)
    d = service.model.latent_dim
    basis = service.custom_basis  # the slider is fitted in the span of the built-in directions
    shift = basis @ (basis.T @ torch.randn(d, generator=g))
    shift *= 10.0 / shift.norm()
    pos, neg = torch.randn(6, d, generator=g) + shift, torch.randn(6, d, generator=g)
    cv = cross_validate(pos, neg, lambda p, n: service.fit_direction(p, n, min_examples=1))
    assert len(cv.vectors) == 5  # min(5, smaller side)
    assert cv.auc == 1.0
    assert cv.scores[:6].min() > cv.scores[6:].max() and cv.scores[:6].mean() > 0 > cv.scores[6:].mean()


def test_random_labels_give_chance_auc_on_average(service):
    g = torch.Generator().manual_seed(1)
    aucs = []
    for _ in range(20):
        x = torch.randn(12, service.model.latent_dim, generator=g)
        aucs.append(cross_validate(x[:6], x[6:], lambda p, n: service.fit_direction(p, n, min_examples=1)).auc)
    assert 0.35 < np.mean(aucs) < 0.65


def test_too_few_photos_to_cross_validate_says_so():
    with pytest.raises(ValueError, match="too few photos to cross-validate .* at least 2 with and 2 without the "
                                         "property, got 1 and 4"):
        cross_validate(on_axis([1.0]), on_axis([0.0, 1.0, 2.0, 3.0]), first_axis)


def test_the_verdict_reads_the_figures():
    clear = CustomCheck(6, 5, 5, 0.91, 1.0, 4, 5, 7.5, 0, {"Male": 0.12, "Young": 0.02, "Smiling": 0.01})
    text = clear.verdict
    assert "Held-out AUC 0.91 over 11 photos" in text and "separates faces it never saw" in text
    assert "carried 4 of the 5" in text and "moved Male by 0.12" in text and "hold Male fixed" in text
    assert "Too few" not in text
    weak = CustomCheck(3, 4, 3, 0.4, 0.5, 0, 0, 3.0, 2, {"Male": 0.01, "Young": 0.02, "Smiling": 0.0})
    text = weak.verdict
    assert text.startswith("Too few photos to tell (3 with, 4 without")
    assert "does not tell faces it never saw apart" in text and "2 of those edits" in text and "barely moved" in text


# -- through the model -----------------------------------------------------------------------------------------
def test_measures_of_a_fitted_slider_through_the_editor(service, fitted):
    steps = []
    report = check_custom_slider(service, fitted.latents_with, fitted.latents_without,
                                 lambda *a: steps.append(a[:2]))
    assert steps == [(1, 4), (2, 4), (3, 4), (3, 4)]  # 3 folds, then the batched edits
    assert (report.n_with, report.n_without, report.folds) == (3, 3, 3)
    assert 0.0 <= report.auc <= 1.0 and 0.0 <= report.moved <= 1.0
    assert 0 <= report.flipped <= report.flip_n <= 6 and report.pixel > 0
    assert report.leakage == {} and "not measured" in report.notes[0]  # the tiny model has no classifier
    assert "Too few photos to tell" in report.verdict


def test_a_separable_slider_moves_and_flips_held_out_faces_and_leakage_is_read(service, monkeypatch):
    g = torch.Generator().manual_seed(2)
    d = service.model.latent_dim
    shift = torch.zeros(d)
    shift[:30] = 1.5
    pos, neg = 0.5 * torch.randn(5, d, generator=g) + shift, 0.5 * torch.randn(5, d, generator=g)
    torch.manual_seed(0)
    classifier = AttributeClassifier(ClassifierConfig(["Male", "Young", "Smiling"], image_size=service.image_size,
                                                      widths=[4, 8]))
    monkeypatch.setattr(service, "classifier", classifier)
    report = check_custom_slider(service, pos, neg)
    assert report.auc == 1.0 and report.flip_n == 10  # every held-out face starts on its own side ...
    assert report.moved == 1.0 and report.flipped == 10  # ... and the edit carries it across, after re-encoding
    assert set(report.leakage) == {"Male", "Young", "Smiling"} and report.notes == []
    assert all(v >= 0 for v in report.leakage.values())


def test_progress_is_reported_once_per_photo(service, photos, tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a photo")
    calls = []
    fitted = service.fit_custom_direction([*photos[:3], junk], photos[3:], lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(i, 7) for i in range(1, 8)]  # the skipped photo counts too
    assert calls[0][2] == "encoding photo 1 of 7 (with the property)" and "without" in calls[-1][2]
    assert fitted.latents_with.shape == (3, service.model.latent_dim) and len(fitted.latents_without) == 3


def test_a_check_that_raises_stops_the_fit_between_photos(service, photos):
    calls = []

    def stop_after_two() -> None:
        if len(calls) >= 2:
            raise LimitError("the custom slider took longer than the 60 s a request may take")

    with pytest.raises(LimitError, match="took longer than the 60 s"):
        service.fit_custom_direction(photos[:3], photos[3:], lambda *a: calls.append(a), stop_after_two)
    assert len(calls) == 2  # two photos encoded, none after
    with pytest.raises(LimitError, match="the custom slider took longer"):
        service.fit_custom_direction(photos[:3], photos[3:], lambda *a: calls.append(a),
                                     Deadline(0.0, "the custom slider").check)
    assert len(calls) == 2


# -- the UI handler ---------------------------------------------------------------------------------------------
@pytest.fixture
def ui(service) -> EditorUI:
    return EditorUI(service)


def test_the_ui_shows_the_verdict_after_fitting(ui, photos):
    shown = []
    custom, slots, message, *_ = ui.custom_slider("Tiny", [str(p) for p in photos[:3]], [str(p) for p in photos[3:]],
                                                  {}, [], [], None, lambda *a, **k: shown.append((a, k)))
    assert "Tiny" in custom and slots == ["Tiny"]
    assert "fitted on 3 faces with and 3 without" in message
    assert "**Cross-validated on your photos:** Too few photos to tell" in message and "Held-out AUC" in message
    units = [k["unit"] for _, k in shown]
    assert units.count("photos") == 6 and units.count("folds") == 4


def test_cancel_stops_the_fit_at_the_next_photo(ui, photos):
    request = SimpleNamespace(session_hash="session-1")
    assert ui.cancel_custom(request) == "Nothing to cancel."
    shown = []

    def progress(step, desc, unit):
        shown.append(step)
        assert ui.cancel_custom(request) == CANCELLED  # the user presses Cancel after the first photo

    custom, slots, message, *_ = ui.custom_slider("Tiny", [str(p) for p in photos[:3]],
                                                  [str(p) for p in photos[3:]], {}, [], [], request, progress)
    assert message == CANCELLED and custom == {} and slots == []
    assert shown == [(1, 6)]  # no photo after the cancel was encoded
    assert ui._stops == {}  # the session's stop flag is released

"""The leakage-floor experiment's arithmetic on cases with known answers, its page, and its CLI on bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from app.edit_evaluation import validation_halves
from experiments import cli as experiments_cli
import torch
from PIL import Image

from app.classifier import AttributeClassifier, ClassifierConfig
from app.edit_evaluation import encode_faces
from app.regions import region_mask
from app.service import EditorService
from experiments.leakage_floor import (by_starting_gender, instrument_confound, null_floor, readings, render,
                                       write_report)
from flow_model.imaging import celeba_crop, to_tensor
from tests.editor_support import build_assets
from tests.experiments.support import refuses_a_model_without_directions


def _faces(groups: list[tuple[int, int, int, float]]) -> tuple[np.ndarray, np.ndarray]:
    """(attribute label, held label, count, P(held)) per group -> probs and labels with columns (attribute, held)."""
    labels, probs = [], []
    for attribute, held, count, p in groups:
        labels += [[attribute, held]] * count
        probs += [[0.5, p]] * count
    return np.array(probs), np.array(labels)


def test_confound_is_the_within_stratum_difference_weighted_by_faces_without_the_attribute():
    probs, labels = _faces([(1, -1, 4, 0.3), (-1, -1, 6, 0.1), (1, 1, 3, 0.9), (-1, 1, 3, 0.8)])
    assert instrument_confound(probs, labels, 0, +1, 1) == pytest.approx((6 * 0.2 + 3 * 0.1) / 9)
    # the slider's negative side: faces without the attribute are the ones "with" it
    assert instrument_confound(probs, labels, 0, -1, 1) == pytest.approx((4 * -0.2 + 3 * -0.1) / 7)
    # a stratum with too few faces on one side is left out; none left -> NaN
    assert instrument_confound(probs, labels, 0, +1, 1, min_count=4) == pytest.approx(0.2)
    assert math.isnan(instrument_confound(probs, labels, 0, +1, 1, min_count=7))


def test_a_classifier_that_only_reads_the_held_label_has_no_confound():
    probs, labels = _faces([(1, -1, 5, 0.1), (-1, -1, 9, 0.1), (1, 1, 4, 0.95), (-1, 1, 3, 0.95)])
    assert instrument_confound(probs, labels, 0, +1, 1) == pytest.approx(0.0)


def test_null_floor_interpolates_in_pixel_change_and_holds_at_the_ends():
    null = [{"pixel": 20.0, "Male": 0.04}, {"pixel": 5.0, "Male": 0.01}, {"pixel": 10.0, "Male": 0.02}]
    assert null_floor(null, 7.5, "Male") == pytest.approx(0.015)
    assert null_floor(null, 15.0, "Male") == pytest.approx(0.03)
    assert null_floor(null, 1.0, "Male") == pytest.approx(0.01) and null_floor(null, 90.0, "Male") == 0.04


def test_gender_split_puts_each_face_in_the_group_its_starting_reading_gives():
    # columns (attribute, Male): two men (one without the attribute), three women (two without it)
    before = torch.tensor([[0.2, 0.9], [0.7, 0.6], [0.1, 0.2], [0.3, 0.1], [0.8, 0.4]])
    after = torch.tensor([[0.8, 0.8], [0.9, 0.6], [0.6, 0.7], [0.4, 0.4], [0.9, 0.3]])
    split = by_starting_gender(before, after, 0, +1, 1)
    men, women = split["men"], split["women"]
    assert (men["n"], women["n"]) == (2, 3)
    assert men["abs"] == pytest.approx(0.05) and men["signed"] == pytest.approx(-0.05)
    assert women["abs"] == pytest.approx(0.3) and women["signed"] == pytest.approx(0.7 / 3)
    assert men["share"] == pytest.approx(0.1 / 1.0) and women["share"] == pytest.approx(0.9 / 1.0)
    assert (men["flip"], men["flip_n"]) == (1.0, 1) and (women["flip"], women["flip_n"]) == (0.5, 2)
    # the negative side: faces that start with the attribute are the ones to flip
    assert by_starting_gender(before, after, 0, -1, 1)["women"]["flip_n"] == 1
    # every face read as women: the men's group is empty, not NaN-filled
    assert by_starting_gender(before[2:], after[2:], 0, +1, 1)["men"] == {"n": 0}


def test_a_local_sliders_edit_is_read_as_the_editor_shows_it_kept_to_its_region(celeba_dir, tmp_path):
    service = EditorService.load(build_assets(celeba_dir, tmp_path))
    size = service.image_size
    files = sorted((celeba_dir / "img_align_celeba").glob("*.jpg"))[:4]
    images = torch.stack([to_tensor(celeba_crop(Image.open(f).convert("RGB"), size)) for f in files])
    torch.manual_seed(0)
    classifier = AttributeClassifier(ClassifierConfig(["Male"], image_size=size, widths=[4, 8])).eval()
    faces = encode_faces(service, classifier, images)
    edited = faces.latents + 0.5 * torch.randn(faces.latents.shape, generator=torch.Generator().manual_seed(1))
    _, whole = readings(service, classifier, faces, edited)
    _, eyes = readings(service, classifier, faces, edited, region_mask("eyes", size))
    _, nowhere = readings(service, classifier, faces, edited, torch.zeros(size, size))
    assert whole > 1.0 and 0 < eyes < whole / 2 and nowhere < 0.05 * whole


def test_validation_halves_are_disjoint_seeded_and_independent_of_the_listing_order():
    names = [f"{i:06d}.jpg" for i in range(11)]
    first, second = validation_halves(names, 0)
    assert len(first) == 5 and len(second) == 6 and sorted(first + second) == names
    assert validation_halves(list(reversed(names)), 0) == (first, second)
    assert validation_halves(names, 1) != (first, second)


def _results() -> dict:
    held = {"abs": 0.08, "signed": 0.07, "signed_se": 0.01, "null": 0.01, "confound": float("nan"),
            "confound_ci": [float("nan"), float("nan")]}
    return {"model": "m", "minutes": 1.0, "faces": 4, "val_faces": 10,
            "null": [{"scale": 1.0, "pixel": 3.0, "Male": 0.01, "Young": 0.02, "Smiling": 0.03}],
            "sliders": [{"slider": "Beard", "pixel": 9.5, "held": {"Male": held}}]}


def test_page_has_one_row_per_slider_and_attribute_and_keeps_the_account(tmp_path):
    text = render(_results(), tmp_path / "floor.md")
    row = [line for line in text.splitlines() if line.startswith("| Beard |")]
    assert row == ["| Beard | 9.5 | Male | 0.080 | +0.070 ± 0.010 | 0.010 | - [-, -] |"]
    assert "INLP" not in text and "Whose gender" not in text  # neither measured, no section
    results = _results()
    results["nullspace"] = {"rows": 3, "source": "the model's directions file", "auc": [0.81, 0.52]}
    results["sliders"][0]["nullspace"] = {"Male": 0.075, "Male_signed": 0.07, "shift": 0.2, "shift_before": 0.25}
    text = render(results, tmp_path / "floor.md")
    assert "0.810 -> 0.520" in text and "the basis's 3 directions" in text and "from the model's directions" in text
    assert "| Beard | 0.080 | 0.075 | +0.070 | +0.250 | +0.200 |" in text.splitlines()
    results["sliders"][0]["by_gender"] = {
        "men": {"n": 0}, "women": {"n": 5, "flip": 0.25, "flip_n": 4, "abs": 0.2, "signed": 0.18, "share": 1.0}}
    text = render(results, tmp_path / "floor.md")
    assert "| Beard | - | - | - | - | 0.200 | +0.180 | 100% | 25% (4) |" in text.splitlines()
    out = tmp_path / "floor.md"
    out.write_text("old\n## Account\n\nours\n")
    write_report(_results(), out)
    assert out.read_text().endswith("## Account\n\nours\n") and "| Beard |" in out.read_text()
    fresh = tmp_path / "fresh.md"
    write_report(_results(), fresh)
    assert "## Account" in fresh.read_text() and "Table 2" not in fresh.read_text()
    assert json.loads((tmp_path / "floor.json").read_text())["sliders"][0]["slider"] == "Beard"


def test_cli_names_a_model_without_directions_and_a_missing_one(tmp_path, capsys):
    model = refuses_a_model_without_directions("leakage-floor", tmp_path, capsys)
    out = tmp_path / "f.md"
    assert experiments_cli.main(["leakage-floor", "--model", str(tmp_path / "absent"), "--out", str(out)]) == 2
    assert str(tmp_path / "absent") in capsys.readouterr().err and not out.exists()
    assert experiments_cli.main(["leakage-floor", "--model", str(model), "--nullspace-rounds", "-1",
                                 "--out", str(out)]) == 2
    assert "--nullspace-rounds must be >= 0" in capsys.readouterr().err and not out.exists()

"""The face-geometry check: real faces pass, non-faces and distorted faces do not, and its arithmetic."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.align import apply_transform
from app.face_check import (FaceGeometryCheck, interocular, procrustes_mean, quantile_threshold, shape_scores,
                            wilson_interval)
from flow_model.imaging import celeba_crop, to_tensor
from tests.editor_support import full_size_faces

SIZE = 64
FIT = 32  # real faces the module's check is fitted on; the next HELD are held out


@pytest.fixture(scope="module")
def faces(celeba_dir: Path) -> torch.Tensor:
    """Real aligned CelebA faces in the model's 64x64 training framing, uint8 (N, 3, 64, 64)."""
    return torch.stack([to_tensor(celeba_crop(Image.open(p).convert("RGB"), SIZE))
                        for p in full_size_faces(celeba_dir, FIT + 12)])


@pytest.fixture(scope="module")
def check(faces: torch.Tensor) -> FaceGeometryCheck:
    check = FaceGeometryCheck()
    check.fit(faces[:FIT])
    return check


def _warp(image: torch.Tensor, coefficients: tuple[float, ...], rows: slice = slice(None)) -> torch.Tensor:
    """PIL's affine warp (output pixel -> input pixel) applied to `rows` of the image, mean colour outside it."""
    pixels = image.permute(1, 2, 0).numpy()
    fill = tuple(int(v) for v in pixels.reshape(-1, 3).mean(0))
    warped = np.asarray(Image.fromarray(pixels).transform((SIZE, SIZE), Image.Transform.AFFINE, coefficients,
                                                          Image.Resampling.BICUBIC, fillcolor=fill))
    out = pixels.copy()
    out[rows] = warped[rows]
    return torch.from_numpy(out).permute(2, 0, 1).contiguous()


def _similar(image: torch.Tensor, degrees: float, scale: float) -> torch.Tensor:
    """The image turned and scaled about its centre."""
    c, s = math.cos(math.radians(degrees)) / scale, math.sin(math.radians(degrees)) / scale
    mid = SIZE / 2
    return _warp(image, (c, -s, mid - c * mid + s * mid, s, c, mid - s * mid - c * mid))


def _stretched_below(image: torch.Tensor, row: int, factor: float) -> torch.Tensor:
    """Everything below `row` (just under the eyes) stretched vertically: a longer nose, the mouth moved down."""
    return _warp(image, (1, 0, 0, 0, 1 / factor, row - row / factor), slice(row, None))


def test_held_out_real_faces_are_found_and_mostly_pass(check, faces):
    result = check.check(faces[FIT:])
    assert result.found.sum() >= 11 and result.passed.sum() >= 8
    assert result.share == pytest.approx(result.passed.mean())
    assert np.isfinite(result.score[result.found]).all() and np.isnan(result.score[~result.found]).all()
    low, high = result.interval()
    assert low <= result.share <= high
    assert result.summary()["passed"] == int(result.passed.sum())


def test_blank_and_noise_images_are_not_faces(check):
    rng = np.random.default_rng(0)
    blank = np.zeros((2, 3, SIZE, SIZE), np.uint8)
    blank[1] = 128
    noise = rng.integers(0, 256, (2, 3, SIZE, SIZE), dtype=np.uint8)
    result = check.check(np.concatenate([blank, noise]))
    assert not result.found.any() and not result.passed.any()
    assert np.isnan(result.score).all() and result.share == 0.0


def test_a_stretched_lower_face_scores_worse(check, faces):
    originals = faces[:8]
    before = check.check(originals)
    after = check.check(torch.stack([_stretched_below(x, 36, 1.5) for x in originals]))
    both = before.found & after.found
    assert both.sum() >= 7
    rise = after.score[both] - before.score[both]
    assert (rise > 0).sum() >= 6 and rise.mean() > 0.015


def test_turning_and_scaling_a_face_leaves_its_score(check, faces):
    originals = faces[:8]
    before = check.check(originals)
    for degrees, scale in ((6.0, 1.0), (-6.0, 1.05), (0.0, 0.93)):
        after = check.check(torch.stack([_similar(x, degrees, scale) for x in originals]))
        both = before.found & after.found
        assert both.sum() >= 7
        assert np.abs(after.score[both] - before.score[both]).max() < 0.025


def test_shape_arithmetic_on_synthetic_shapes():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(68, 2))
    base[36:42] += [-3, 0]
    base[42:48] += [3, 0]

    def moved(shape, angle, scale, shift):
        c, s = math.cos(angle), math.sin(angle)
        return apply_transform(np.array([[scale * c, -scale * s, shift[0]], [scale * s, scale * c, shift[1]]]), shape)

    copies = np.stack([moved(base, a, k, t) for a, k, t in ((0.3, 2.0, (5, 1)), (-0.2, 0.5, (0, 9)), (0, 1, (0, 0)))])
    reference = procrustes_mean(copies)
    assert interocular(reference) == pytest.approx(1.0)
    assert np.allclose(shape_scores(copies, reference), 0.0, atol=1e-9)  # similar shapes score 0
    bent = base.copy()
    bent[48:68] += [0, 2.0]  # the mouth moved down
    with_nan = np.stack([bent, np.full((68, 2), np.nan)])
    scores = shape_scores(with_nan, reference)
    assert scores[0] > 0.05 and np.isnan(scores[1])


def test_quantile_threshold_and_wilson_interval_arithmetic():
    scores = np.random.default_rng(0).permutation(np.arange(1.0, 101.0))
    threshold = quantile_threshold(scores, 0.95)
    assert threshold == 95.0 and (scores <= threshold).mean() == 0.95
    assert quantile_threshold(scores, 0.5) == 50.0 and quantile_threshold(scores, 1.0) == 100.0
    assert quantile_threshold(np.array([0.3]), 0.95) == 0.3
    for bad_q in (0.0, 1.5):
        with pytest.raises(ValueError, match="quantile"):
            quantile_threshold(scores, bad_q)
    with pytest.raises(ValueError, match="finite"):
        quantile_threshold(np.array([1.0, np.nan]), 0.9)
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bad_input_gives_a_clear_error(check):
    with pytest.raises(ValueError, match="uint8 images shaped"):
        check.check(torch.zeros(1, 3, SIZE, SIZE))  # float
    with pytest.raises(ValueError, match="uint8 images shaped"):
        check.check(np.zeros((1, SIZE, SIZE, 3), np.uint8))  # channels last
    with pytest.raises(ValueError, match="uint8 images shaped"):
        check.check(np.zeros((0, 3, SIZE, SIZE), np.uint8))
    unfitted = FaceGeometryCheck(check.aligner)
    with pytest.raises(RuntimeError, match="fit"):
        unfitted.check(np.zeros((1, 3, SIZE, SIZE), np.uint8))
    with pytest.raises(ValueError, match="found in only 0 of 6"):
        unfitted.fit(np.zeros((6, 3, SIZE, SIZE), np.uint8))

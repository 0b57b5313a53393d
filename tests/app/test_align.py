"""Face alignment: the similarity fit, and photos landing where the training crop has the face."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.editor_support import full_size_faces, photo_of
from app.align import TEMPLATE, FaceAligner, apply_transform, crop_landmarks, measure_template, \
    similarity_transform
from flow_model.imaging import ImageError, celeba_crop

EYES = [0, 1]


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


@pytest.fixture(scope="module")
def faces(celeba_dir: Path) -> list[Image.Image]:
    return [Image.open(p).convert("RGB") for p in full_size_faces(celeba_dir, 40)]


def test_similarity_transform_recovers_a_known_map():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (5, 2))
    angle, scale, shift = 0.4, 2.5, np.array([12.0, -7.0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = scale * src @ rot.T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rot, atol=1e-9)
    np.testing.assert_allclose(apply_transform(matrix, src), dst, atol=1e-9)
    mirrored = similarity_transform(src, src * [-1, 1])  # no reflection: the best rotation, not a mirror
    assert np.linalg.det(mirrored[:, :2]) > 0


def test_template_matches_a_fresh_measurement(aligner, faces):
    mean, std, found = measure_template(aligner, faces)
    assert found >= 35
    np.testing.assert_allclose(mean[[0, 1, 3, 4]], TEMPLATE[[0, 1, 3, 4]], atol=0.01)
    assert (std[EYES] < 0.03).all()


@pytest.mark.parametrize("index, angle, scale, offset", [(0, 18.0, 2.6, (180, 60)), (3, -12.0, 1.7, (420, 200)),
                                                         (7, 5.0, 3.0, (60, 20))])
def test_alignment_puts_the_eyes_where_the_training_crop_has_them(aligner, faces, index, angle, scale, offset):
    face = faces[index]
    aligned = aligner.align(photo_of(face, angle, scale, offset), 256).crop
    boxes = aligner.detect(aligned)
    assert boxes, "the aligned crop must still show a face"
    found = aligner.landmarks(aligned, boxes[0]) / 256
    in_training_crop = crop_landmarks(aligner, face)
    assert np.abs(found[EYES] - in_training_crop[EYES]).max() < 0.03
    assert np.abs(found[EYES] - TEMPLATE[EYES]).max() < 0.05
    # and the picture is the training crop's: compare the pixels at the same framing
    reference = np.asarray(celeba_crop(face, 64), np.float64)
    ours = np.asarray(aligned.resize((64, 64), Image.Resampling.LANCZOS), np.float64)
    assert np.abs(ours - reference).mean() < 25


def test_the_largest_of_several_faces_is_taken(aligner, faces):
    photo = Image.new("RGB", (1000, 600), (200, 200, 200))
    photo.paste(faces[0].resize((178 * 2, 218 * 2)), (40, 60))
    photo.paste(faces[5], (700, 150))
    aligned = aligner.align(photo, 128)
    assert aligned.location.faces_found == 2 and "2 faces found" in aligned.location.note
    assert aligned.location.box[0] < 500  # the big face on the left


def test_no_face_is_a_clear_error(aligner):
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    with pytest.raises(ImageError, match="no face found"):
        aligner.align(noise, 64)

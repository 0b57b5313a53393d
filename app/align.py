"""Face detection, landmarks and a similarity transform onto the training crop, so uploads frame like CelebA.

dlib's HOG frontal detector finds the faces and its 68-point predictor (shipped in `face_recognition_models`, used
offline) gives CelebA's five landmarks: both eye centres, the nose tip and the mouth corners. A least-squares
similarity transform (Umeyama 1991) maps the eyes and mouth corners onto TEMPLATE, where the same detector and
predictor put them in the crops the model was trained on, so a photo is framed, scaled and levelled like a training
image.
"""
from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from PIL import Image

from flow_model.imaging import CELEBA_CROP, ImageError

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"
# left and right as seen in the image
LANDMARK_NAMES = ("left eye", "right eye", "nose tip", "left mouth corner", "right mouth corner")

# Mean landmark positions in the CelebA training crop (the centred square of side 148/178 of the aligned image),
# as fractions of the crop side, (x, y) in LANDMARK_NAMES order. Measured with `measure_template` on 300
# full-resolution training images (faces found in 293; scripts/measure_alignment.py). Across faces the eyes vary by
# about 0.01 of the side and the mouth corners by 0.02, but the nose tip by 0.05 (it moves with head yaw, which
# CelebA's alignment leaves in), so the fit uses the eyes and mouth corners only (FIT_POINTS).
TEMPLATE = np.array([
    [0.3676, 0.5245],
    [0.6260, 0.5246],
    [0.4941, 0.6769],
    [0.3800, 0.7956],
    [0.6133, 0.7960],
])
FIT_POINTS = [0, 1, 3, 4]

DETECT_MAX_SIDE = 640  # faces are searched for on a copy this large, so detection time does not grow with the photo
MIN_FACE_PIXELS = 24  # a face narrower than this (in the photo) carries too little detail to align


def models_dir() -> Path:
    """The `models/` folder of face_recognition_models, found without importing it (its helper needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("face_recognition_models is not installed; it ships the dlib landmark predictor")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2x3 matrix [sR | t] minimising sum |sR src + t - dst|^2 over rotations R (no reflection), scales s."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise ValueError(f"need two matching (N >= 2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    var_s = (a**2).sum() / len(src)
    if var_s == 0:
        raise ValueError("the source points are all the same point")
    u, sigma, vt = np.linalg.svd(b.T @ a / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ d @ vt
    scale = float(np.trace(np.diag(sigma) @ d) / var_s)
    return np.hstack([scale * rotation, (mu_d - scale * rotation @ mu_s)[:, None]])


def apply_transform(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(img: Image.Image, matrix: np.ndarray, size: int) -> Image.Image:
    """Render the size x size output of the similarity `matrix` (image -> output pixels).

    The photo is first box-reduced so the warp never shrinks by more than 2x (PIL's affine resampling does not
    antialias), and only the region the output sees is cut out; parts outside the photo repeat its edge pixels.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    factor = max(1, int(0.5 / scale))
    if factor > 1:
        img = img.reduce(factor)
        matrix = matrix @ np.diag([factor, factor, 1.0])
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    corners = apply_transform(inverse, [[0, 0], [size, 0], [0, size], [size, size]])
    left, top = np.floor(corners.min(0)).astype(int) - 2
    right, bottom = np.ceil(corners.max(0)).astype(int) + 2
    w, h = img.size
    inside = img.crop((max(left, 0), max(top, 0), min(max(right, 1), w), min(max(bottom, 1), h)))
    if (left, top, right, bottom) != (max(left, 0), max(top, 0), min(right, w), min(bottom, h)):
        pad = ((max(0, -top), max(0, bottom - h)), (max(0, -left), max(0, right - w)), (0, 0))
        inside = Image.fromarray(np.pad(np.asarray(inside), pad, mode="edge"))
    offset = np.array([[1, 0, -left], [0, 1, -top], [0, 0, 1]], np.float64)
    local = (offset @ np.vstack([inverse, [0, 0, 1]]))[:2]
    return inside.transform((size, size), Image.Transform.AFFINE, local.ravel().tolist(), Image.Resampling.BICUBIC)


def padded_copy(img: Image.Image) -> tuple[Image.Image, int]:
    """The image on a canvas of its mean colour, padded by half its larger side, and that padding in pixels: dlib's
    HOG detector misses a face that fills the image, because its window needs background around the face."""
    rgb = img.convert("RGB")
    pad = max(rgb.size) // 2
    padded = Image.new("RGB", (rgb.width + 2 * pad, rgb.height + 2 * pad),
                       tuple(int(v) for v in np.asarray(rgb).reshape(-1, 3).mean(0)))
    padded.paste(rgb, (pad, pad))
    return padded, pad


@dataclass
class FaceLocation:
    """Where the face to edit is in a photo: its landmarks, the transform onto the training framing, a note."""

    landmarks: np.ndarray  # (5, 2) in photo pixels, LANDMARK_NAMES order
    box: tuple[int, int, int, int]  # the detection (left, top, right, bottom) in photo pixels
    faces_found: int
    note: str
    unit_matrix: np.ndarray  # (2, 3): photo pixels -> the crop as the unit square; scale it for any crop size

    def matrix(self, size: int) -> np.ndarray:
        """photo pixels -> pixels of a size x size crop."""
        return np.diag([float(size), float(size)]) @ self.unit_matrix


@dataclass
class AlignedFace:
    """One aligned face: the crop and where it came from."""

    crop: Image.Image
    location: FaceLocation


class FaceAligner:
    """dlib detector + 68-point predictor; loading the predictor takes ~1 s, so it starts in a background thread."""

    def __init__(self, predictor_path: str | Path | None = None, detect_max_side: int = DETECT_MAX_SIDE) -> None:
        import dlib

        self._dlib = dlib
        self.detect_max_side = detect_max_side
        self.detector = dlib.get_frontal_face_detector()
        # dlib's detector keeps scratch images: two threads in it at once (its upsampling pyramid) corrupted the heap
        # and crashed the process; requests run in several threads, so calls into dlib take turns.
        self._dlib_lock = threading.Lock()
        self._predictor = None
        path = Path(predictor_path) if predictor_path else models_dir() / PREDICTOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"landmark predictor not found: {path}")
        self._loader = threading.Thread(target=self._load_predictor, args=(path,), daemon=True)
        self._loader.start()

    def _load_predictor(self, path: Path) -> None:
        self._predictor = self._dlib.shape_predictor(str(path))

    @property
    def predictor(self):
        self._loader.join()
        if self._predictor is None:
            raise RuntimeError("the dlib landmark predictor failed to load")
        return self._predictor

    def detect(self, img: Image.Image) -> list[tuple[int, int, int, int]]:
        """Face boxes in photo pixels, largest first; small photos are searched at 2x and 4x as well."""
        w, h = img.size
        shrink = max(1.0, max(w, h) / self.detect_max_side)
        small = img if shrink == 1.0 else img.resize((round(w / shrink), round(h / shrink)), Image.Resampling.BILINEAR)
        pixels = np.asarray(small.convert("RGB"))
        rects = []
        for upsample in (0, 1, 2):
            if upsample and max(small.size) * 2**upsample > 2 * self.detect_max_side:
                break
            with self._dlib_lock:
                rects = self.detector(pixels, upsample)
            if len(rects):
                break
        boxes = [tuple(int(round(v * shrink)) for v in (r.left(), r.top(), r.right(), r.bottom())) for r in rects]
        return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]), reverse=True)

    def scored_boxes(self, img: Image.Image) -> list[tuple[tuple[int, int, int, int], float]]:
        """Every face box the detector finds at the image's own scale, with its confidence (the HOG detector's
        margin; the usual acceptance threshold is 0), most confident first. Without `detect`'s shrinking and
        upsampling: for images already sized for the detector, where the score is what matters."""
        with self._dlib_lock:
            rects, scores, _ = self.detector.run(np.asarray(img.convert("RGB")), 0, 0.0)
        found = [((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in zip(rects, scores)]
        return sorted(found, key=lambda b: b[1], reverse=True)

    def landmarks(self, img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
        """CelebA's five points from the 68-point shape: eye centres, nose tip (30), mouth corners (48, 54)."""
        pts = self.shape(img, box)
        return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])

    def shape(self, img: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
        """The predictor's 68 points (iBUG order) in photo pixels, (68, 2), for the face in `box`."""
        left, top, right, bottom = box
        margin = (right - left) // 2
        region = (max(0, left - margin), max(0, top - margin), min(img.width, right + margin),
                  min(img.height, bottom + margin))
        pixels = np.asarray(img.crop(region).convert("RGB"))
        rect = self._dlib.rectangle(left - region[0], top - region[1], right - region[0], bottom - region[1])
        predictor = self.predictor
        with self._dlib_lock:
            shape = predictor(pixels, rect)
        return np.array([(p.x, p.y) for p in shape.parts()], np.float64) + region[:2]

    def locate(self, img: Image.Image) -> FaceLocation:
        """The largest face and the similarity transform that frames it like the training images.

        A tight face crop (the detector needs some background around a face) is searched again on a copy padded by
        half its size; an image framed like CelebA's aligned images (178x218 proportions) in which no face is found
        is taken in its own framing (the training crop of it). The note says which happened.
        """
        boxes = self.detect(img)
        if not boxes:
            return self._locate_tight(img)
        box = boxes[0]
        if box[2] - box[0] < MIN_FACE_PIXELS:
            raise ImageError(f"the face is only {box[2] - box[0]} pixels wide; use a photo where it is at least "
                             f"{MIN_FACE_PIXELS} pixels wide")
        points = self.landmarks(img, box)
        unit = similarity_transform(points[FIT_POINTS], TEMPLATE[FIT_POINTS])
        note = f"{len(boxes)} faces found; editing the largest" if len(boxes) > 1 else ""
        return FaceLocation(points, box, len(boxes), note, unit)

    def _locate_tight(self, img: Image.Image) -> FaceLocation:
        w, h = img.size
        shrink = max(1.0, max(w, h) / self.detect_max_side)  # the padded copy is made of a copy at detection size
        small = img if shrink == 1.0 else img.resize((round(w / shrink), round(h / shrink)), Image.Resampling.BILINEAR)
        padded, pad = padded_copy(small)
        boxes = self.detect(padded)
        if boxes and (boxes[0][2] - boxes[0][0]) * shrink >= MIN_FACE_PIXELS:
            points = (self.landmarks(padded, boxes[0]) - pad) * shrink
            unit = similarity_transform(points[FIT_POINTS], TEMPLATE[FIT_POINTS])
            box = tuple(int(round((v - pad) * shrink)) for v in boxes[0])
            return FaceLocation(points, box, len(boxes), "the face fills the image, so it was found on a padded copy "
                                "(detected and aligned as usual)", unit)
        if abs(w / h - 178 / 218) < 0.03:
            side = CELEBA_CROP * w
            left, top = (w - side) / 2, (h - side) / 2
            unit = np.array([[1 / side, 0.0, -left / side], [0.0, 1 / side, -top / side]])
            points = apply_transform(np.linalg.inv(np.vstack([unit, [0, 0, 1]]))[:2], TEMPLATE)
            return FaceLocation(points, (0, 0, w, h), 0, "no face was detected, but the image is framed like an "
                                "aligned CelebA face, so its own framing is used (the centred training crop)", unit)
        raise ImageError("no face found: use a photo with one face looking roughly at the camera, not too small, "
                         "dark or turned away (or an aligned 178x218 face crop, or a "
                         "square crop of exactly the model's size)")

    def align(self, img: Image.Image, size: int) -> AlignedFace:
        """The largest face, warped into a size x size crop framed like the training images."""
        location = self.locate(img)
        return AlignedFace(warp(img, location.matrix(size), size), location)


def crop_landmarks(aligner: FaceAligner, img: Image.Image) -> np.ndarray | None:
    """The five landmarks of the largest face in the training crop of an aligned CelebA image, as crop fractions."""
    boxes = aligner.detect(img)
    if not boxes:
        return None
    points = aligner.landmarks(img, boxes[0])
    side = CELEBA_CROP * img.width
    return (points - [(img.width - side) / 2, (img.height - side) / 2]) / side


def measure_template(aligner: FaceAligner, images: Iterable[Image.Image]) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean and standard deviation of the crop landmarks over the images where a face is found, and that count."""
    found = [p for p in (crop_landmarks(aligner, img) for img in images) if p is not None]
    if not found:
        raise ValueError("no face was found in any of the images")
    stack = np.stack(found)
    return stack.mean(0), stack.std(0), len(found)

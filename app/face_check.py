"""Is an image an undistorted face? A per-image check of face geometry, independent of the model and the classifier.

A Frechet distance says how far a set of samples is from real faces, not how many of them are distorted. This check
reads each image on its own: it is upsampled, searched for a face with the editor's dlib detector (on a padded copy,
`align.padded_copy`, since the face fills the training framing) and given dlib's 68 landmarks. The landmarks are
mapped onto a reference shape by the least-squares similarity transform, and the score is the RMS distance left over
in units of the reference's inter-ocular distance: moving, turning or resizing a face leaves it unchanged, while a
stretched jaw, a displaced mouth or eyes at different heights raise it. The reference is the Procrustes mean of real
faces and the threshold a quantile of their scores.

dlib's predictor is a regression from the box's mean shape, so on a smeared face it still returns a plausible shape:
the shape score alone passed nearly every sample the detector found, distorted or not. The detector's confidence
does fall on those faces, so a face also has to be detected at least as confidently as the same quantile of real
faces (counted from the other end). A face passes when it is found and clears both; real faces pass at about the
quantile squared times the detection rate (the two are correlated, so somewhat more).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .align import FaceAligner, apply_transform, padded_copy, similarity_transform

VIVID_SATURATION, VIVID_BRIGHTNESS = 0.7, 0.55  # more saturated than skin, lips or hair are in real faces
# The top of the head in the training framing (fractions of the side): above the brows, between the temples.
SCALP_ROWS, SCALP_COLUMNS = (0.0, 0.28), (0.25, 0.75)
# A bright red or pink, redder than most skin (R - G has a median of about 0.2 in the middle of real faces; the
# reddest skin is what gives real bald heads their tail).
BLOWN_RED, BLOWN_RED_OVER_GREEN = 0.8, 0.25
# Red backgrounds and red hair give real faces a long tail of scalp blow-out shares: at QUANTILE a quarter of real
# bald heads and hair-colour edits that only warm the hair fail; at this one few do, and Bald's blown scalps still do.
SCALP_QUANTILE = 0.99
UPSAMPLE = 256  # the detector and predictor see each image at this side; dlib's detector needs faces of ~80 px
QUANTILE = 0.95
MIN_BOX_FRACTION = 0.3  # a detection narrower than this share of the image is not the framed face
MIN_FIT_FACES = 5  # fewer found real faces make a meaningless mean shape and quantile
LEFT_EYE, RIGHT_EYE = slice(36, 42), slice(42, 48)  # iBUG 68-point indices, as seen in the image


def interocular(shape: np.ndarray) -> float:
    """Distance between the two eye centres of a (68, 2) shape."""
    return float(np.linalg.norm(shape[RIGHT_EYE].mean(0) - shape[LEFT_EYE].mean(0)))


def _canonical(shape: np.ndarray) -> np.ndarray:
    """The shape centred, scaled to inter-ocular distance 1 and turned so the eyes are level: a fixed gauge for the
    reference, so scores are in inter-ocular units."""
    eyes = shape[RIGHT_EYE].mean(0) - shape[LEFT_EYE].mean(0)
    angle = -math.atan2(eyes[1], eyes[0])
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    centred = shape - shape.mean(0)
    return centred @ rot.T / interocular(shape)


def procrustes_mean(shapes: np.ndarray, iterations: int = 2) -> np.ndarray:
    """Mean of (N, 68, 2) shapes after similarity-aligning each onto the running mean (generalised Procrustes)."""
    shapes = np.asarray(shapes, np.float64)
    if shapes.ndim != 3 or shapes.shape[1:] != (68, 2) or len(shapes) < 1 or not np.isfinite(shapes).all():
        raise ValueError(f"need finite (N >= 1, 68, 2) shapes, got {shapes.shape}")
    reference = _canonical(shapes.mean(0))
    for _ in range(iterations):
        aligned = [apply_transform(similarity_transform(s, reference), s) for s in shapes]
        reference = _canonical(np.mean(aligned, 0))
    return reference


def shape_scores(shapes: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per shape, the RMS landmark distance left after the best similarity transform onto `reference`, in units of
    the reference's inter-ocular distance; NaN for a shape with NaNs (no face)."""
    shapes = np.asarray(shapes, np.float64)
    if shapes.ndim != 3 or shapes.shape[1:] != reference.shape:
        raise ValueError(f"need (N, {reference.shape[0]}, 2) shapes, got {shapes.shape}")
    out = np.full(len(shapes), np.nan)
    for i, s in enumerate(shapes):
        if np.isfinite(s).all():
            residual = apply_transform(similarity_transform(s, reference), s) - reference
            out[i] = math.sqrt(float((residual**2).sum(1).mean())) / interocular(reference)
    return out


def quantile_threshold(scores: np.ndarray, quantile: float) -> float:
    """The smallest score s with at least `quantile` of `scores` <= s (the inverted empirical CDF), so exactly
    ceil(quantile x n) of the scores pass."""
    scores = np.asarray(scores, np.float64)
    if not 0 < quantile <= 1:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    if scores.ndim != 1 or len(scores) == 0 or not np.isfinite(scores).all():
        raise ValueError("need a non-empty 1-D array of finite scores")
    return float(np.quantile(scores, quantile, method="inverted_cdf"))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a share k/n (95% for z = 1.96): sound near 0 and 1, where k/n +- 2 SE is not."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class GeometryResult:
    """Per image: a face found, its shape score and detector confidence (NaN when none was found), passed."""

    found: np.ndarray  # (N,) bool
    score: np.ndarray  # (N,) float, the shape score
    confidence: np.ndarray  # (N,) float, the detector's
    passed: np.ndarray  # (N,) bool

    @property
    def share(self) -> float:
        return float(self.passed.mean())

    @property
    def detection_rate(self) -> float:
        return float(self.found.mean())

    def interval(self) -> tuple[float, float]:
        return wilson_interval(int(self.passed.sum()), len(self.passed))

    def summary(self) -> dict:
        low, high = self.interval()
        return {"n": len(self.passed), "found": int(self.found.sum()), "passed": int(self.passed.sum()),
                "share": self.share, "low": low, "high": high, "detection_rate": self.detection_rate}


def _images(images: torch.Tensor | np.ndarray) -> np.ndarray:
    x = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3] or len(x) == 0:
        raise ValueError(f"need uint8 images shaped (N >= 1, 3, S, S), got {x.dtype} {tuple(x.shape)}")
    return x


class FaceGeometryCheck:
    """dlib landmarks of images in the training framing, scored against real faces (`fit` first, then `check`)."""

    def __init__(self, aligner: FaceAligner | None = None, size: int = UPSAMPLE) -> None:
        self.aligner = aligner or FaceAligner()
        self.size = size
        self.reference: np.ndarray | None = None  # (68, 2), inter-ocular distance 1
        self.threshold: float | None = None  # the highest shape score that passes
        self.min_confidence: float | None = None  # the lowest detector confidence that passes
        self.quantile: float | None = None

    def measure(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 68, 2) landmarks in pixels of the upsampled image and (N,) detector confidences, NaN where no face
        of the framed size (centred in the image, at least MIN_BOX_FRACTION of its side) is found."""
        x = _images(images)
        shapes, confidence = np.full((len(x), 68, 2), np.nan), np.full(len(x), np.nan)
        for i, pixels in enumerate(x):
            big = Image.fromarray(pixels.transpose(1, 2, 0)).resize((self.size, self.size), Image.Resampling.BICUBIC)
            padded, pad = padded_copy(big)
            for box, conf in self.aligner.scored_boxes(padded):
                cx, cy = (box[0] + box[2]) / 2 - pad, (box[1] + box[3]) / 2 - pad
                if box[2] - box[0] >= MIN_BOX_FRACTION * self.size and 0 <= cx < self.size and 0 <= cy < self.size:
                    shapes[i], confidence[i] = self.aligner.shape(padded, box) - pad, conf
                    break
        return shapes, confidence

    def fit(self, images: torch.Tensor | np.ndarray, quantile: float = QUANTILE) -> GeometryResult:
        """Reference shape, shape-score threshold and confidence floor from real faces; returns their own result
        (biased towards passing: judge the check on other faces)."""
        shapes, confidence = self.measure(images)
        found = np.isfinite(confidence)
        if found.sum() < MIN_FIT_FACES:
            raise ValueError(f"a face was found in only {int(found.sum())} of {len(shapes)} fitting images; the "
                             f"check needs at least {MIN_FIT_FACES} real faces in the model's framing")
        self.reference = procrustes_mean(shapes[found])
        scores = shape_scores(shapes, self.reference)
        self.threshold = quantile_threshold(scores[found], quantile)
        self.min_confidence = -quantile_threshold(-confidence[found], quantile)
        self.quantile = quantile
        return self._result(scores, confidence)

    def check(self, images: torch.Tensor | np.ndarray) -> GeometryResult:
        """Each image: found, shape score, confidence and passed (found, score <= threshold and confidence >=
        the floor)."""
        if self.reference is None:
            raise RuntimeError("fit the check on real faces first")
        shapes, confidence = self.measure(images)
        return self._result(shape_scores(shapes, self.reference), confidence)

    def _result(self, scores: np.ndarray, confidence: np.ndarray) -> GeometryResult:
        found = np.isfinite(scores)
        passed = (found & (np.nan_to_num(scores, nan=np.inf) <= self.threshold)
                  & (np.nan_to_num(confidence, nan=-np.inf) >= self.min_confidence))
        return GeometryResult(found, scores, confidence, passed)


def vivid_share(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,) share of each image's pixels with saturation (max - min) / max >= VIVID_SATURATION at a brightness
    (max) >= VIVID_BRIGHTNESS. An edit that blows a region out (a red scalp, a blue smear) raises it; most real
    faces have none, a few a vivid background."""
    x = _images(images).astype(np.float32) / 255
    high, low = x.max(1), x.min(1)
    saturation = (high - low) / np.maximum(high, 1e-3)
    return ((saturation >= VIVID_SATURATION) & (high >= VIVID_BRIGHTNESS)).mean((1, 2))


def scalp_blowout_share(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,) share of each image's scalp region (SCALP_ROWS x SCALP_COLUMNS) that is bright red or pink (R >=
    BLOWN_RED and R - G >= BLOWN_RED_OVER_GREEN). A Bald edit blows the scalp out to pink or dark red, less
    saturated than vivid_share counts and unlike real bald heads, whose scalp reads as skin."""
    x = _images(images).astype(np.float32) / 255
    side = x.shape[-1]
    top, bottom = (round(f * side) for f in SCALP_ROWS)
    left, right = (round(f * side) for f in SCALP_COLUMNS)
    red, green = x[:, 0, top:bottom, left:right], x[:, 1, top:bottom, left:right]
    return ((red >= BLOWN_RED) & (red - green >= BLOWN_RED_OVER_GREEN)).mean((1, 2))


class ColourCheck:
    """Colour blow-out, which the geometry check cannot see (dlib reads the face's outline and features, not the
    colour of the scalp or the cheeks): an image passes when its vivid share is at most the same quantile of real
    faces' as the geometry check uses, and its scalp blow-out share at most their SCALP_QUANTILE (`fit` first, then
    `check`)."""

    def __init__(self) -> None:
        self.threshold: float | None = None  # of vivid_share
        self.scalp_threshold: float | None = None  # of scalp_blowout_share
        self.quantile: float | None = None
        self.scalp_quantile: float | None = None

    def fit(self, images: torch.Tensor | np.ndarray, quantile: float = QUANTILE,
            scalp_quantile: float = SCALP_QUANTILE) -> np.ndarray:
        """The thresholds from real faces; returns which of them pass."""
        vivid, scalp = vivid_share(images), scalp_blowout_share(images)
        if len(vivid) < MIN_FIT_FACES:
            raise ValueError(f"the colour check needs at least {MIN_FIT_FACES} real faces, got {len(vivid)}")
        self.threshold = quantile_threshold(vivid, quantile)
        self.scalp_threshold = quantile_threshold(scalp, scalp_quantile)
        self.quantile, self.scalp_quantile = quantile, scalp_quantile
        return self._passed(vivid, scalp)

    def check(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """(N,) bool: passed."""
        if self.threshold is None or self.scalp_threshold is None:
            raise RuntimeError("fit the check on real faces first")
        return self._passed(vivid_share(images), scalp_blowout_share(images))

    def _passed(self, vivid: np.ndarray, scalp: np.ndarray) -> np.ndarray:
        return (vivid <= self.threshold) & (scalp <= self.scalp_threshold)

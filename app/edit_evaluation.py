"""Measure what the sliders do, with an attribute classifier that neither the model nor the directions saw.

For held-out faces, every slider at a few values goes through the editor's own path (EditorService.edit_vectors and
the same checked decode with back-off as EditorService.edit), and the classifier scores the reconstruction and the
edit: the mean shift of P(attribute) the intended way, the share of faces moved the intended way, the flip rate
(share crossing 0.5 among those that started on the other side), leakage (mean |dP| of other attributes), pixel
change and back-off rate. The same measures calibrate the sliders (`calibrate`), and the classifier's penultimate
features give a Frechet distance of model samples to real faces (`sample_quality`, which also runs the per-sample
face-geometry check of `face_check` on the same samples).
"""
from __future__ import annotations

import functools
import math
from collections import abc
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from flow_model.evaluate import mean_and_se
from flow_model.glow import reduce_bits

from .calibration import (FLIP_BOUND_Z, HOLDS, LEAK_BOUND_Z, MAX_LEAKAGE, METHODS, MIN_FLIP, MIN_GROUP, MIN_INTACT,
                          MIN_MOVED, STEER_MAX, STEER_STEP, TARGET_FLIP, Calibration, SliderCalibration)
from .classifier import Instrument
from .directions import NULLSPACE, own_hold
from .face_check import ColourCheck, FaceGeometryCheck, GeometryResult, wilson_interval
from .regions import composite, region_mask
from .service import (AUTO_METHOD, BACKOFF_FRACTIONS, SLIDER_BY_LABEL, Check, EditorService, SliderSpec, checkpoint,
                      orthogonalize)

LEAK_ATTRIBUTES = ("Male", "Young", "Smiling")
VALUES = (-1.0, -0.5, 0.5, 1.0)
GRID = (1.0, 1.25, 1.5, 2.0, 3.0)  # multipliers of the class-mean gap that calibration tries
DECODABLE_BACKOFF = 0.1  # a strength "still decodes" when at most this share of faces needs the back-off
PROBES = 3  # strengths measured between the last grid point that keeps faces intact and the next, past the target
VERDICT_Z = 1.96  # the report's intervals on the figures are two-sided 95%


# -- the arithmetic ---------------------------------------------------------------------------------------
def validation_halves(names: Sequence[str], seed: int) -> tuple[list[str], list[str]]:
    """The calibration half and the report half of a validation split: a seeded permutation of the sorted names, so
    every tool that measures edits (evaluate-edits, experiments) takes the same faces for the same role."""
    names = sorted(names)
    order = np.random.default_rng(seed).permutation(len(names))
    half = len(names) // 2
    return [names[i] for i in order[:half]], [names[i] for i in order[half:]]


def edit_measures(before: torch.Tensor, after: torch.Tensor, target: int, direction: float,
                  leak: Mapping[str, int]) -> dict:
    """Classifier probabilities (N, A) before and after an edit that should move attribute `target` up
    (direction > 0) or down (direction < 0).

    - shift: mean change of P(target) in the intended direction (positive = the intended way);
    - moved: share of faces whose P(target) moved the intended way (strictly); moved_se: its binomial standard
      error; n: the faces;
    - flip: among faces that started on the other side of 0.5, the share that ended on the intended side
      (NaN when none started there); flip_n is that denominator;
    - leakage: per named attribute, mean |dP|; leakage_se: its standard error over the faces;
    - drift: per named attribute, mean dP (signed: an edit that moves it one way on average, as against jitter);
      drift_se: its standard error;
    - leakage_groups: per named attribute, [mean |dP|, its standard error, faces] among the faces that started
      with P(attribute) >= 0.5 and among the others (an average over all faces can hide that the edit turns the
      fewer of the two groups, men for a makeup slider, into the other).
    """
    if direction == 0:
        raise ValueError("an edit needs a direction")
    s = 1.0 if direction > 0 else -1.0
    p0, p1 = before[:, target].double(), after[:, target].double()
    d = s * (p1 - p0)
    start_other = p0 < 0.5 if s > 0 else p0 >= 0.5
    ended = p1 >= 0.5 if s > 0 else p1 < 0.5
    n_other = int(start_other.sum())
    flip = float(ended[start_other].double().mean()) if n_other else math.nan
    changes = {name: (after[:, j] - before[:, j]).double() for name, j in leak.items() if j != target}
    leakage, se = _mean_and_se({name: c.abs() for name, c in changes.items()})
    drift, drift_se = _mean_and_se(changes)
    groups = {name: [_group_leak(c.abs()[side]) for side in (before[:, leak[name]] >= 0.5,
                                                              before[:, leak[name]] < 0.5)]
              for name, c in changes.items()}
    moved = float((d > 0).double().mean())
    return {"shift": float(d.mean()), "moved": moved, "moved_se": math.sqrt(moved * (1 - moved) / len(d)),
            "n": len(d), "flip": flip, "flip_n": n_other, "leakage": leakage, "leakage_se": se, "drift": drift,
            "drift_se": drift_se, "leakage_groups": groups}


def _group_leak(values: torch.Tensor) -> list[float]:
    """[mean, standard error (0 for fewer than two faces), faces] of one group's |dP|; [0, 0, 0] for none."""
    if not len(values):
        return [0.0, 0.0, 0]
    mean, se = mean_and_se(values)
    return [mean, 0.0 if math.isnan(se) else se, len(values)]


def _mean_and_se(values: Mapping[str, torch.Tensor]) -> tuple[dict[str, float], dict[str, float]]:
    """Per name, the mean of its values over the faces and that mean's standard error (0 for one face)."""
    pairs = {name: mean_and_se(v) for name, v in values.items()}
    return ({name: m for name, (m, _) in pairs.items()},
            {name: 0.0 if math.isnan(se) else se for name, (_, se) in pairs.items()})


def target_leaks(attribute: str) -> tuple[str, ...]:
    """The attributes the sliders' issue sets a leakage line for when `attribute` is edited: Male for every
    non-gender slider, Young for Smiling."""
    return (("Male",) if attribute != "Male" else ()) + (("Young",) if attribute == "Smiling" else ())


def leak_bound(row: Mapping, attribute: str) -> float:
    """A measured leakage as calibration judges it: mean |dP| plus LEAK_BOUND_Z standard errors (0 if unmeasured)."""
    return row["leakage"].get(attribute, 0.0) + LEAK_BOUND_Z * row.get("leakage_se", {}).get(attribute, 0.0)


def group_leak_bound(row: Mapping, attribute: str) -> float:
    """A leakage as calibration ranks it: the larger of leak_bound and the same bound within each group of faces
    on one side of 0.5 of the leaked attribute before the edit (edit_measures' leakage_groups) that holds at least
    MIN_GROUP faces, so a slider meets the line for men and women alike, not on average over faces most of which
    are women."""
    groups = [m + LEAK_BOUND_Z * se for m, se, n in row.get("leakage_groups", {}).get(attribute, ()) if n >= MIN_GROUP]
    return max([leak_bound(row, attribute), *groups])


def moved_bound(row: Mapping) -> float:
    """A measured moved share as calibration judges it: the share minus LEAK_BOUND_Z standard errors."""
    return row["moved"] - LEAK_BOUND_Z * row["moved_se"]


def flip_bound(row: Mapping, z: float = FLIP_BOUND_Z) -> float:
    """A measured flip rate as calibration judges it: the lower end of its one-sided Wilson interval at `z` over the
    flip_n faces that started on the other side (z = 0: the rate itself; 0 when no face started there)."""
    if math.isnan(row["flip"]):
        return 0.0
    if z == 0:
        return row["flip"]
    n = row["flip_n"]
    return wilson_interval(round(row["flip"] * n), n, z)[0]


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N, F): |mu_a - mu_b|^2 +
    tr(Ca + Cb - 2 (Ca Cb)^1/2), the FID formula (here in the attribute classifier's feature space)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 feature vectors on each side")
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    # tr (Ca Cb)^1/2 = tr (Ca^1/2 Cb Ca^1/2)^1/2, a symmetric PSD matrix: stable through eigh even when singular
    w, v = np.linalg.eigh(ca)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cb @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * cross)


# -- the editor's path, batched ---------------------------------------------------------------------------
def _uint8(service: EditorService, x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.uint8 else service.model.quantize(x).cpu()


def decode_with_backoff(service: EditorService, base: torch.Tensor, edited: torch.Tensor,
                        check: Check | None = None, mask: torch.Tensor | None = None,
                        base_decoded: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What EditorService.edit shows for each row, batched: the edit when it decodes, else the largest of 1/16 ..
    15/16 of it whose prefix of strengths all decode (the base face's own decode when none does), kept to `mask`
    (EditorService.edit_mask) over the base faces' decodes `base_decoded` (decoded here when not given). Returns
    uint8 images (N, 3, S, S) and the strength shown (N,). check (a deadline, a cancel button) runs before each
    back-off pass: each is 15 decodes."""
    if mask is not None and base_decoded is None:
        base_decoded = service.decode_checked(base)[0]
    images, ok = service.decode_checked(edited)
    if mask is not None:
        images = composite(base_decoded, images, mask)
    images = _uint8(service, images).clone()
    strength = torch.ones(len(edited), dtype=torch.float64)
    fractions = torch.arange(1, BACKOFF_FRACTIONS) / BACKOFF_FRACTIONS
    for i in torch.nonzero(~ok).flatten().tolist():
        checkpoint(check)
        imgs, good = service.decode_checked(base[i] + fractions[:, None] * (edited[i] - base[i]))
        usable = int(good.long().cumprod(0).sum())
        if usable == 0:
            images[i] = _uint8(service, service.decode_checked(base[i:i + 1])[0])[0]
            strength[i] = 0.0
        else:
            shown = imgs[usable - 1:usable]
            images[i] = _uint8(service, shown if mask is None else composite(base_decoded[i], shown, mask))[0]
            strength[i] = float(fractions[usable - 1])
    return images, strength


@dataclass
class FaceSet:
    """Held-out faces as the editor sees them: latents, their 5-bit reconstructions and the classifier's reading."""

    latents: torch.Tensor  # (N, D)
    images: torch.Tensor  # (N, 3, S, S) uint8, = decode(latent)
    probs: torch.Tensor  # (N, A)
    features: torch.Tensor  # (N, F)
    decoded: torch.Tensor  # (N, 3, S, S) float: the decoder's output before rounding, what local edits blend into


@dataclass
class Intactness:
    """Whether edits keep faces intact: of the faces whose reconstruction passes the face-geometry check (and the
    colour check, given one), the share whose edit still passes. Counting only those faces keeps the checks' misses
    on real faces out of the figure."""

    check: FaceGeometryCheck
    base: torch.Tensor  # (N,) bool: the reconstructions that pass
    colour: ColourCheck | None = None

    @classmethod
    def of(cls, check: FaceGeometryCheck, faces: FaceSet, colour: ColourCheck | None = None) -> "Intactness":
        everyone = cls(check, torch.ones(len(faces.images), dtype=torch.bool), colour)
        base = torch.from_numpy(everyone.passed(faces.images))
        if not base.any():
            raise ValueError("no reconstruction passes the face checks: intactness cannot be measured")
        return cls(check, base, colour)

    def passed(self, images: torch.Tensor) -> np.ndarray:
        ok = self.colour.check(images) if self.colour is not None else np.ones(len(images), dtype=bool)
        return ok & self.check.check(images).passed

    def share(self, edited: torch.Tensor) -> float:
        """(N, 3, S, S) uint8 edits of the same faces, in order -> the share of the passing ones that still pass."""
        return float(self.passed(edited[self.base]).mean())


@torch.inference_mode()
def encode_faces(service: EditorService, classifier: Instrument, images: torch.Tensor,
                 batch_size: int = 64) -> FaceSet:
    """Model-size crops (already aligned, e.g. validation faces) -> latents, reconstructions and readings. The
    reconstruction of a flow is exact: decode(encode(x)) = x at the model's bit depth."""
    model = service.model
    latents = torch.cat([model.flatten_latents(model.encode(images[i:i + batch_size].to(service.device),
                                                            standardized=True)).float().cpu()
                         for i in range(0, len(images), batch_size)])
    decoded = torch.cat([service.decode_checked(latents[i:i + batch_size])[0]
                         for i in range(0, len(latents), batch_size)])
    recon = reduce_bits(images, model.config.n_bits)
    probs, feats = classifier.predict(recon)
    return FaceSet(latents, recon, probs, feats, decoded)


def edited_images(service: EditorService, faces: FaceSet, vector: torch.Tensor, value: float,
                  backoff: bool = True, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every face + value x vector through the editor's decode (kept to `mask`, as EditorService.edit keeps a local
    slider's edit to its region) -> uint8 images and the strength shown. With backoff=False (calibration's
    shortcut: one decode per face) a face whose edit does not decode shows unedited."""
    edited = faces.latents + value * vector  # a (D,) vector for every face, or (N, D), one per face
    if backoff:
        return decode_with_backoff(service, faces.latents, edited, mask=mask, base_decoded=faces.decoded)
    return decoded_or_unedited(service, faces, edited, mask)


def decoded_or_unedited(service: EditorService, faces: FaceSet, edited: torch.Tensor,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Edited latents of `faces`, one decode each (kept to `mask`) -> uint8 images, a face whose edit does not
    decode shown unedited, and per face 1 or 0 for whether its edit is shown."""
    images, ok = service.decode_checked(edited)
    images = _uint8(service, composite(faces.decoded, images, mask))
    return torch.where(ok[:, None, None, None], images, faces.images), ok.double()


def measure_vector(service: EditorService, classifier: Instrument, faces: FaceSet, vector: torch.Tensor,
                   value: float, attribute: str, sign: float, leak: Sequence[str] = LEAK_ATTRIBUTES,
                   backoff: bool = True, intact: Intactness | None = None,
                   edited: tuple[torch.Tensor, torch.Tensor] | None = None, mask: torch.Tensor | None = None) -> dict:
    """The edits of `edited_images`, measured: edit_measures plus pixel change (mean |edit - reconstruction| in
    0..255 units), back-off rate, over all other attributes the largest mean |dP| and, given `intact`, the share of
    faces kept intact (Intactness). Without back-off a face whose edit does not decode counts as unedited, so
    its flip and shift are 0: a lower bound on what the editor shows. `edited`: those edits, when the caller
    already has them; `mask`: where the edits are kept (edited_images)."""
    names = classifier.attributes
    images, strength = edited if edited is not None else edited_images(service, faces, vector, value, backoff, mask)
    probs, _ = classifier.predict(images)
    target = names.index(attribute)
    m = edit_measures(faces.probs, probs, target, sign * value, {a: names.index(a) for a in leak if a in names})
    others = (probs - faces.probs).abs().mean(0)
    others[target] = -1
    j = int(others.argmax())
    m.update(value=value, pixel=float((images.float() - faces.images.float()).abs().mean()),
             backoff=float((strength < 1).double().mean()), max_leak=float(others[j]), max_leak_attribute=names[j],
             p_before=float(faces.probs[:, target].mean()), p_after=float(probs[:, target].mean()), n=len(images))
    if intact is not None:
        m["intact"] = intact.share(images)
    return m


def evaluate_sliders(service: EditorService, classifier: Instrument, faces: FaceSet,
                     specs: Sequence[SliderSpec], values: Sequence[float] = VALUES, method: str | None = None,
                     progress=None, intact: Intactness | None = None) -> dict[str, list[dict]]:
    """Each slider at each value with the service's defaults (its calibrated method, scale, negative side's scale,
    kept attributes and region unless `method` names one)."""
    out = {}
    for spec in specs:
        chosen = AUTO_METHOD if method is None else method
        vector = service.edit_vectors([spec.label], method=chosen, latent=faces.latents)[0]
        mask = service.edit_mask([spec.label])
        out[spec.label] = [measure_vector(service, classifier, faces, vector * (service.multiplier(
            spec.label, v, chosen) / v if v else 1.0), v, spec.attribute, spec.sign, intact=intact, mask=mask)
            for v in values]
        if progress:
            progress(spec.label, out[spec.label])
    return out


# -- calibration ------------------------------------------------------------------------------------------
def _scale_for_target(grid: Sequence[float], flips: Sequence[float], target: float) -> float | None:
    """The smallest multiplier reaching `target` flip, linear between grid points; None if none does."""
    prev_m, prev_f = 0.0, 0.0
    for m, f in zip(grid, flips):
        if f >= target:
            if f == prev_f:
                return m
            return prev_m + (m - prev_m) * (target - prev_f) / (f - prev_f)
        prev_m, prev_f = m, f
    return None


class ScaleChoice(NamedTuple):
    """A slider's scale from choose_scale: the flip rate there (measured, linear between measured strengths), whether
    the slider stays in the default set, and the flip as judged (flip_bound) there."""

    scale: float
    flip: float
    default: bool
    judged: float


def choose_scale(grid: Sequence[float], rows: Sequence[dict], target: float = TARGET_FLIP,
                 min_flip: float = MIN_FLIP, intact: Callable[[int], float] | None = None,
                 probe: Callable[[float], dict] | None = None, flip_z: float = 0.0) -> ScaleChoice:
    """From measures at multipliers `grid` (value +1 x multiplier), the slider's scale.

    Only multipliers that still decode count: back-off on at most DECODABLE_BACKOFF of faces and, given `intact`
    (grid index -> share of faces kept intact), at least MIN_INTACT. Distortion grows with the
    strength, so the first multiplier below MIN_INTACT ends the search; `intact` is asked only for multipliers the
    search reaches (it is the costly measure). The scale is the smallest multiplier whose flip, judged by
    flip_bound at `flip_z` (0: the measured rate), reaches `target`; if none, the strongest decodable one with the
    highest measured flip, and the slider stays in the default set only if that flip reaches min_flip.

    A grid step can jump past the target and break faces at once (a slider flipping 26% at one gap and 91% at
    1.5, where too few faces stay intact, or where more than DECODABLE_BACKOFF of them need the back-off). Given
    `probe` (multiplier -> a measure with "intact", given only with `intact`), strengths between the two are then
    measured too (_probe_between), and those that still decode count like grid points."""
    judge = functools.partial(flip_bound, z=flip_z)
    usable = []  # (multiplier, judged flip, measured flip)
    for i, (m, r) in enumerate(zip(grid, rows)):
        undecodable = r["backoff"] > DECODABLE_BACKOFF
        broken = not undecodable and intact is not None and intact(i) < MIN_INTACT
        if (undecodable or broken) and probe is not None and judge(r) >= target:
            low = usable[-1] if usable else (0.0, 0.0, 0.0)
            usable += _probe_between(low, _point(m, r, judge), target, probe, judge)
            break
        if undecodable:
            continue
        if broken:
            break
        usable.append(_point(m, r, judge))
        if usable[-1][1] >= target:
            break
    if not usable:
        return ScaleChoice(grid[0], 0.0, False, 0.0)
    ms, js, fs = zip(*usable)
    scale = _scale_for_target(ms, js, target)
    if scale is not None:
        flip = float(np.interp(scale, (0.0, *ms), (0.0, *fs)))
        return ScaleChoice(round(scale, 2), flip, True, target)
    best = max(range(len(fs)), key=lambda i: (fs[i], ms[i]))  # ties: the stronger edit
    return ScaleChoice(ms[best], fs[best], fs[best] >= min_flip, js[best])


def _point(m: float, row: Mapping, judge: Callable[[Mapping], float]) -> tuple[float, float, float]:
    """A measured strength as the scale search uses it: (multiplier, judged flip, measured flip, 0 when no face
    started on the other side)."""
    return m, judge(row), row["flip"] if not math.isnan(row["flip"]) else 0.0


def _probe_between(low: tuple[float, float, float], high: tuple[float, float, float], target: float,
                   probe: Callable[[float], dict],
                   judge: Callable[[dict], float]) -> list[tuple[float, float, float]]:
    """The usable (multiplier, judged flip, measured flip) triples found by at most PROBES measures between `low`,
    the last strength that keeps faces intact (short of the target), and `high`, one that reaches the target but
    breaks faces. Each probe goes where the line between the bracket's ends reaches the target, or halfway once the
    high end no longer reaches it; an intact probe short of the target raises the low end, a probe that breaks faces
    lowers the high end. One probe on the line is often enough; the others catch a target that lies just under
    where faces break (a slider 1% short of it at one probe, or 1% too broken at the next)."""
    found = []
    for _ in range(PROBES):
        (lo_m, lo_j), (hi_m, hi_j) = low[:2], high[:2]
        m = _scale_for_target((lo_m, hi_m), (lo_j, hi_j), target) if hi_j >= target else (lo_m + hi_m) / 2
        m = round(m, 2)
        if not lo_m < m < hi_m:
            break
        row = probe(m)
        point = _point(m, row, judge)
        if row["backoff"] <= DECODABLE_BACKOFF and row["intact"] >= MIN_INTACT:
            found.append(point)
            if point[1] >= target:
                break
            low = point
        else:
            high = point
    return found


class MeasuredLazily(abc.Sequence):
    """A grid's measures, each taken when first read: the scale search stops at the first strength that reaches
    the target or breaks faces, so the stronger ones (most of calibration's decodes) are never measured."""

    def __init__(self, grid: Sequence[float], measure: Callable[[float], dict]) -> None:
        self.grid, self.measure, self._rows = list(grid), measure, {}

    def __len__(self) -> int:
        return len(self.grid)

    def __getitem__(self, i: int) -> dict:
        i = range(len(self.grid))[i]  # IndexError past the end, which also ends iteration
        if i not in self._rows:
            self._rows[i] = self.measure(self.grid[i])
        return self._rows[i]

    def taken(self) -> list[dict | None]:
        """Every grid point's measure, None where none was taken."""
        return [self._rows.get(i) for i in range(len(self.grid))]


def minus_side(intact: Intactness, service: EditorService, faces: FaceSet, vector: torch.Tensor, scale: float,
               grid: Sequence[float], mask: torch.Tensor | None = None) -> tuple[float | None, float, str]:
    """The negative side of a slider calibrated to `scale` on the positive side (its edits kept to `mask`): None
    when taking the attribute away at -scale keeps MIN_INTACT of the faces intact, else the strongest of the grid
    points below scale (and a half and a quarter of the weakest) that does, searched upwards and stopped at the
    first that breaks more (the weakest when none does). Returns (minus scale, share intact there, what the reason
    says)."""
    def share(m: float) -> float:
        return intact.share(edited_images(service, faces, vector, -m, backoff=False, mask=mask)[0])

    at_scale = share(scale)
    if at_scale >= MIN_INTACT:
        return None, at_scale, ""
    candidates = sorted(m for m in {*grid, grid[0] / 2, grid[0] / 4} if m < scale) or [scale / 4]
    found, kept = candidates[0], None
    for m in candidates:
        at = share(m)
        if at < MIN_INTACT:
            kept = at if kept is None else kept  # even the weakest breaks faces: it is the side's scale anyway
            break
        found, kept = m, at
    return found, kept, (f"; at -{scale:g} gaps only {at_scale:.0%} of the faces stayed intact (< {MIN_INTACT:.0%}), "
                         f"so the negative side stops at {found:g} gaps ({kept:.0%} intact)")


def _fit_methods(service: EditorService, classifier: Instrument, faces: FaceSet, base: SliderSpec,
                 keep: Sequence[str], grid: Sequence[float], methods: Sequence[str],
                 intact: Intactness | None, flip_z: float, mask: torch.Tensor | None = None,
                 pairs: Sequence[tuple[str, str]] | None = None,
                 steer: Mapping[str, float] | None = None) -> tuple[tuple[str, str], dict]:
    """Steps 2-3 of `calibrate` for one set of held attributes: per (method, how the held attributes are held)
    the scale, then the pair (_rank). The intactness a grid point was checked for is kept in its row. `mask` keeps
    every edit to a face region; `pairs`, when given, are the only pairs tried; `steer` (attribute -> k) adds k
    times each attribute's classifier normal to the held direction (SliderCalibration.steer)."""
    results = {}
    d = service.directions
    holds = [m for m in methods if m in HOLDS] + ([NULLSPACE] if any(k in d.nullspaces for k in keep) else [])
    for method, hold in pairs or [(m, h) for m in methods for h in dict.fromkeys([own_hold(m), *holds])
                                  if keep or h == own_hold(m)]:
        v = base.sign * d.vector(base.attribute, method, faces.latents)
        if keep:
            v = orthogonalize(v.reshape(-1, v.shape[-1]), torch.cat([d.held(k, hold) for k in keep])).reshape(v.shape)
        for a, k in (steer or {}).items():
            v = v + k * d.vector(a, "classifier")
        shown: dict[float, torch.Tensor] = {}  # each measured strength's edits, for intact_at to check

        def measure(m: float, v=v, shown=shown) -> dict:
            edited = edited_images(service, faces, v, m, backoff=False, mask=mask) if intact is not None else None
            if edited is not None:
                shown[m] = edited[0]
            return measure_vector(service, classifier, faces, v, m, base.attribute, base.sign, backoff=False,
                                  edited=edited, mask=mask)

        rows = MeasuredLazily(grid, measure)

        def intact_at(i: int, rows=rows, shown=shown) -> float:
            rows[i]["intact"] = intact.share(shown[grid[i]])
            return rows[i]["intact"]

        probed: dict[float, dict] = {}

        def probe(m: float, measure=measure, shown=shown, probed=probed) -> dict:
            probed[m] = {**measure(m), "intact": intact.share(shown[m])}
            return probed[m]

        checked = intact is not None
        scale, flip, ok, judged = choose_scale(grid, rows, intact=intact_at if checked else None,
                                               probe=probe if checked else None, flip_z=flip_z)
        shown.clear()
        taken = {**{m: row for m, row in zip(grid, rows.taken()) if row is not None}, **probed}
        near = taken[min(taken, key=lambda m: abs(m - scale))]
        bounds = {a: leak_bound(near, a) for a in LEAK_ATTRIBUTES if a in near["leakage"]}
        worst = {a: group_leak_bound(near, a) for a in bounds}
        results[method, hold] = dict(scale=scale, flip=flip, judged=judged, ok=ok, bounds=bounds, worst=worst,
                                     moved=moved_bound(near), rows=rows, vector=v, probed=probed)

    def rank(p: tuple[str, str]) -> tuple:
        """_rank; ties: the classifier normal, then holding by the slider's own method."""
        return *_rank(results[p], base.attribute), p[0] != "classifier", p[0] != p[1]

    return min(results, key=rank), results


def _rank(r: Mapping, attribute: str) -> tuple[bool, float, float]:
    """How a calibrated edit of `attribute` (one of _fit_methods' results) ranks, lower first: staying in the default
    set first; then how far it misses the issue's targets (its judged flip under TARGET_FLIP, its leakage over
    MAX_LEAKAGE in the issue's lines, judged in the group of faces it leaks most in (group_leak_bound), and its
    moved share under MIN_MOVED, summed), so an edit a little short of the flip can win over one that reaches it by
    dragging another attribute along, for some of the faces or for all; then its largest leakage."""
    short = sum(max(r["worst"].get(a, 0.0) - MAX_LEAKAGE, 0.0) for a in target_leaks(attribute))
    short += max(TARGET_FLIP - r["judged"], 0.0) + max(MIN_MOVED - r["moved"], 0.0)
    return not r["ok"], short, max([*r["bounds"].values(), 0.0])


def held_by(spec: SliderSpec) -> str | None:
    """How a slider holds its kept attributes where that is not by its own method's directions, as the tables say
    it: its calibrated way, or for a within-gender slider, the mean differences; None where it is its own."""
    if not spec.keep:
        return None
    return spec.hold_method or (own_hold(spec.method) if own_hold(spec.method) != spec.method else None)


def _pair_label(method: str, hold: str) -> str:
    """A slider's method and its held directions' method, as a calibration's reason names them."""
    return method + (f" holding by {hold}" if hold != method else "")


def _bounds_text(r: Mapping) -> str:
    """A calibrated edit's leakage and moved-share bounds as a calibration's reason gives them, each leakage with
    its worse group's bound where that is higher."""
    return " ".join(f"{a} {b:.3f}" + (f" (worse group {r['worst'][a]:.3f})" if r["worst"][a] > b + 5e-4 else "")
                    for a, b in r["bounds"].items()) + f" moved {r['moved']:.1%}"


def _flip(row: dict) -> str:
    return ((f"{row['flip']:.0%}" if not math.isnan(row["flip"]) else "-")
            + (f" (back-off {row['backoff']:.0%})" if row["backoff"] else "")
            + (f" (intact {row['intact']:.0%})" if "intact" in row else ""))


def _flips(rows: MeasuredLazily, probed: dict[float, dict]) -> str:
    """A method's grid measures, as the reason of a calibration shows them ("not measured" past where the search
    stopped), then any strength probed between grid points."""
    return ("/".join("not measured" if row is None else _flip(row) for row in rows.taken())
            + "".join(f" (probed at {m:g}: {_flip(row)})" for m, row in probed.items()))


def steer_for(service: EditorService, classifier: Instrument, faces: FaceSet, base: SliderSpec,
              vector: torch.Tensor, scale: float, attribute: str,
              mask: torch.Tensor | None = None) -> tuple[float | None, list[tuple[float, float]], str]:
    """The counter-steer k (class-mean gaps of `attribute`'s classifier normal per gap of the slider) that cancels
    the mean signed change (drift) of `attribute` the edit `vector` x `scale` causes: measured at k = 0 and at
    STEER_STEP against the drift, and read off the line through the two, within STEER_MAX. None, with why, where the
    drift is within LEAK_BOUND_Z standard errors of 0 (nothing to cancel but noise) or does not change along that
    normal. Also returns the (k, drift) measured."""
    u = service.directions.vector(attribute, "classifier")

    def drift(k: float) -> tuple[float, float]:
        row = measure_vector(service, classifier, faces, vector + k * u, scale, base.attribute, base.sign,
                             backoff=False, mask=mask)
        return row["drift"][attribute], row["drift_se"][attribute]

    first, se = drift(0.0)
    if abs(first) <= LEAK_BOUND_Z * se:
        return None, [(0.0, first)], f"its drift {first:+.3f} is within {LEAK_BOUND_Z:g} standard errors of 0"
    k1 = -math.copysign(STEER_STEP, first)
    second = drift(k1)[0]
    measured = [(0.0, first), (k1, second)]
    if abs(second - first) < 1e-9:
        return None, measured, f"its drift does not change along {attribute}'s normal"
    k = k1 * first / (first - second)
    return round(float(np.clip(k, -STEER_MAX, STEER_MAX)), 3), measured, ""


def _steered(service: EditorService, classifier: Instrument, faces: FaceSet, base: SliderSpec,
             keep: Sequence[str], grid: Sequence[float], methods: Sequence[str], intact: Intactness | None,
             flip_z: float, mask: torch.Tensor | None, pair: tuple[str, str],
             r: dict) -> tuple[dict, dict[str, float], list[str]]:
    """Step 5 of `calibrate`: the calibrated edit `r` (of `pair`, its held attributes final), counter-steered
    against each attribute of the issue's lines it still leaks into over MAX_LEAKAGE, overall or in the worse group
    (group_leak_bound), by the mean drift over all faces (steer_for), its scale searched
    again like the pair's, and kept where it misses the targets less (_rank). Returns the edit, its steer and what
    the reason says of each try."""
    steer, said = {}, []
    for a in target_leaks(base.attribute):
        if r["worst"].get(a, 0.0) <= MAX_LEAKAGE or a not in classifier.attributes:
            continue
        k, measured, why = steer_for(service, classifier, faces, base, r["vector"], r["scale"], a, mask)
        drifts = ", ".join(f"{drift:+.3f} at k {at:g}" for at, drift in measured)
        if k is None:
            said.append(f"{a}: {why}, not steered")
            continue
        trial = _fit_methods(service, classifier, faces, base, keep, grid, methods, intact, flip_z, mask=mask,
                             pairs=[pair], steer={**steer, a: k})[1][pair]
        chosen = _rank(trial, base.attribute) < _rank(r, base.attribute)
        said.append(f"{a} ({drifts}): k {k:g}, scale {trial['scale']:g}, flip {trial['flip']:.0%}, "
                    + _bounds_text(trial) + f" ({'chosen' if chosen else 'not chosen'})")
        if chosen:
            r, steer = trial, {**steer, a: k}
    return r, steer, said


def calibrate(service: EditorService, classifier: Instrument, faces: FaceSet,
              labels: Sequence[str] | None = None, grid: Sequence[float] = GRID,
              methods: Sequence[str] | None = None, keep_probe: float | None = None, progress=None,
              geometry: FaceGeometryCheck | None = None, colour: ColourCheck | None = None,
              flip_z: float = FLIP_BOUND_Z) -> Calibration:
    """Per built-in slider, on `faces` (which must not be the faces the evaluation reports on):

    1. keep: the leak attributes (Male, Young, Smiling) whose leakage exceeds MAX_LEAKAGE when the slider's
       classifier normal moves `keep_probe` class-mean gaps (default: the uncalibrated SliderSpec scale, i.e. the
       old +1) are held fixed; every leakage here is judged by leak_bound (mean |dP| plus LEAK_BOUND_Z standard
       errors), since the faces the edits are reported on are others;
    2. per method (the classifier normal, the mean difference and, where the directions carry them for the
       slider's attribute, the mean differences within the face's own gender, one per face), the slider's
       direction, orthogonal to the kept ones' directions taken from either face-independent method
       (holding by the classifier normals removes more of what a linear read-out sees) or, where the directions
       carry them, to the kept ones' nullspace bases (more still), at multipliers `grid` of
       the class-mean gap: the scale is the smallest multiplier whose flip at +1, judged by flip_bound at `flip_z`
       (the lower end of its one-sided interval; 0: the measured rate), reaches TARGET_FLIP among those that still
       decode (choose_scale; with a fitted `geometry` check, also keeping MIN_INTACT of the faces intact, by their
       geometry and, given a fitted `colour` check, their colours; the negative side gets a smaller scale of its
       own where taking the attribute away breaks faces sooner, minus_side);
    3. method and way of holding: of the pairs that stay in the default set, the one that misses the issue's
       targets least at the grid point nearest its scale: its judged flip under TARGET_FLIP plus its leakage over
       MAX_LEAKAGE in the issue's own lines (target_leaks: Male for a non-gender slider, Young for Smiling), judged
       in whichever of the two groups of faces that started on either side of that attribute it leaks more in
       (group_leak_bound: a makeup edit that reads men as women does not hide behind the women it leaves alone), plus
       its moved share (judged by moved_bound) under MIN_MOVED; then the one with the smallest largest leakage
       into the leak attributes; for a slider whose attribute lives in one part of the face (SliderSpec.region),
       the chosen pair's scale is searched again with its edits kept to that region (app/regions.py), and the
       local edit replaces the whole-face one where it ranks better by the same measures (ties: the whole face);
    4. the chosen edit is measured at its calibrated scale: a leak attribute that exceeds MAX_LEAKAGE there and is
       not yet held joins `keep`, and steps 2-4 run again. A leak the probe of step 1 missed because it only grows
       past MAX_LEAKAGE at a larger calibrated scale (hair colours on the shipped model) is held all the same;
    5. once nothing more is held, an edit that still leaks into an attribute of the issue's lines over MAX_LEAKAGE
       is counter-steered against its drift there, where the drift is more than noise, and keeps the steer where
       that misses the targets less (_steered; holding comes first, since it removes what a linear read-out sees
       face by face and a steer only cancels the average).
    The stored leakage is that of the final edit at its calibrated scale.
    """
    d = service.directions
    methods = [m for m in METHODS if m in d.methods] if methods is None else methods
    names = classifier.attributes
    intact = Intactness.of(geometry, faces, colour) if geometry is not None else None
    sliders = {}
    for label in labels or [s.label for s in service.sliders + service.more_sliders]:
        base = SLIDER_BY_LABEL[label]
        own = [m for m in methods if m in d.methods_for(base.attribute)]
        probe = base.scale if keep_probe is None else keep_probe
        raw = base.sign * probe * d.vector(base.attribute, "classifier")
        first = measure_vector(service, classifier, faces, raw, 1.0, base.attribute, base.sign, backoff=False)
        candidates = [a for a in LEAK_ATTRIBUTES if a != base.attribute and a in names]
        keep = [a for a in candidates if leak_bound(first, a) > MAX_LEAKAGE]
        added = []
        while True:
            (method, hold), results = _fit_methods(service, classifier, faces, base, keep, grid, own, intact,
                                                   flip_z)
            r, mask, inside = results[method, hold], None, None
            if base.region is not None:
                region = region_mask(base.region, service.image_size)
                inside = _fit_methods(service, classifier, faces, base, keep, grid, own, intact, flip_z,
                                      mask=region, pairs=[(method, hold)])[1][method, hold]
                if _rank(inside, base.attribute) < _rank(r, base.attribute):
                    r, mask = inside, region
            final = measure_vector(service, classifier, faces, r["vector"], r["scale"], base.attribute, base.sign,
                                   backoff=False, intact=intact, mask=mask)
            more = [a for a in candidates if a not in keep and leak_bound(final, a) > MAX_LEAKAGE]
            if not more:
                break
            added += [f"{a} ({final['leakage'][a]:.2f}, bound {leak_bound(final, a):.2f}, at {r['scale']:g} gaps)"
                      for a in more]
            keep = [a for a in candidates if a in keep or a in more]
        r, steer, steered = _steered(service, classifier, faces, base, keep, grid, own, intact, flip_z, mask,
                                     (method, hold), r)
        if steer:
            final = measure_vector(service, classifier, faces, r["vector"], r["scale"], base.attribute, base.sign,
                                   backoff=False, intact=intact, mask=mask)
        flips = ", ".join(f"{_pair_label(*p)}: {_flips(results[p]['rows'], results[p]['probed'])}" for p in results)
        bounds = ", ".join(f"{_pair_label(*p)}: {_bounds_text(results[p])}" for p in results)
        if inside is not None:
            local = f"{_pair_label(method, hold)} kept to the {base.region}"
            flips += f", {local}: {_flips(inside['rows'], inside['probed'])}"
            bounds += f", {local}: {_bounds_text(inside)} ({'chosen' if mask is not None else 'not chosen'})"
        reason = (f"flip at +{'/'.join(f'{g:g}' for g in grid)} class-mean gaps: {flips}; "
                  f"leakage and moved-share bounds near the scale of each pair: {bounds}; leakage at "
                  f"{probe:g} gaps without holding anything: "
                  + ", ".join(f"{a} {v:.2f}" for a, v in first["leakage"].items()))
        if steered:
            reason += "; steered against the drift (mean signed dP) left at the scale: " + "; ".join(steered)
        if added:
            reason += "; held once they leaked at the calibrated scale: " + ", ".join(added)
        broke = [(g, row["intact"]) for g, row in zip(grid, r["rows"].taken())
                 if row is not None and row.get("intact", 1.0) < MIN_INTACT]
        if broke:
            reason += (f"; {_pair_label(method, hold)} stopped at {broke[0][0]:g} gaps, where only {broke[0][1]:.0%} of "
                       f"the faces stayed intact (< {MIN_INTACT:.0%})")
        minus, intact_share = None, None
        if intact is not None:
            minus, minus_share, said = minus_side(intact, service, faces, r["vector"], r["scale"], grid, mask)
            intact_share = min(final["intact"], minus_share)
            reason += said
        if not r["ok"]:
            reason = (f"out of the default set: at most {r['flip']:.0%} of faces flip at any strength that still "
                      f"decodes; " + reason)
        sliders[label] = SliderCalibration(
            method=method, scale=float(r["scale"]), keep=keep, default=bool(r["ok"]),
            scales={m: float(results[m, own_hold(m)]["scale"]) for m in own}, flip_at_1=float(r["flip"]),
            leakage={a: round(v, 4) for a, v in final["leakage"].items()}, reason=reason,
            intact=intact_share, hold=hold if hold != own_hold(method) else None, minus_scale=minus,
            local=mask is not None, steer=steer)
        if progress:
            progress(label, sliders[label])
    return Calibration(sliders, {"grid": list(grid), "faces": len(faces.latents), "keep_probe": keep_probe,
                                 "methods": list(methods), "target_flip": TARGET_FLIP,
                                 "flip_bound_z": flip_z, "min_flip": MIN_FLIP, "max_leakage": MAX_LEAKAGE,
                                 "leak_bound_z": LEAK_BOUND_Z,
                                 "min_moved": MIN_MOVED, "probes": PROBES, "probes_past_backoff": True,
                                 "pairs_by_shortfall": True, "leakage_by_worse_group": MIN_GROUP,
                                 "steer_step": STEER_STEP, "steer_max": STEER_MAX,
                                 "min_intact": MIN_INTACT if intact is not None else None,
                                 "colour_thresholds": {"vivid": colour.threshold, "scalp": colour.scalp_threshold}
                                 if intact is not None and colour is not None else None})


# -- sample quality ---------------------------------------------------------------------------------------
@dataclass
class SampleQuality:
    """One temperature's samples: their Frechet distance to real faces and, when asked for, the geometry check."""

    frechet: float
    geometry: GeometryResult | None = None


@torch.inference_mode()
def sample_quality(service: EditorService, classifier: Instrument, real_features: torch.Tensor,
                   temperatures: Sequence[float], n: int, seed: int = 0, batch_size: int = 64,
                   geometry: FaceGeometryCheck | None = None) -> dict[float, SampleQuality]:
    """n model samples per temperature, drawn once: the Frechet distance (classifier feature space) of their
    features to `real_features` and, with a fitted `geometry` check, which of the same samples are undistorted."""
    out = {}
    for t in temperatures:
        feats, images = [], []
        for i in range(0, n, batch_size):
            k = min(batch_size, n - i)
            gen = torch.Generator().manual_seed(seed * 1000 + i)
            x = service.model.sample(k, float(t), generator=gen).cpu()
            feats.append(classifier.predict(x)[1])
            images.append(x)
        out[float(t)] = SampleQuality(frechet_distance(torch.cat(feats), real_features),
                                      geometry.check(torch.cat(images)) if geometry is not None else None)
    return out


# -- the report -------------------------------------------------------------------------------------------
MIN_UNDISTORTED = 0.9  # "mostly undistorted": the share of samples the face-geometry check must pass


def recommend_temperature(frechet: Mapping[float, float], undistorted: Mapping[float, float] | None,
                          min_undistorted: float = MIN_UNDISTORTED) -> tuple[float | None, str]:
    """Among the temperatures at which at least `min_undistorted` of the samples pass the face-geometry check, the
    one whose samples are closest to real faces by the Frechet distance. Distortion grows with the temperature while
    realism by the distance improves with it up to a point, so this is the most realistic temperature that is
    still mostly undistorted. The distances of all temperatures come from the same numbers of samples and real faces, so
    they compare fairly with each other. Without the geometry check there is no recommendation: the distance alone
    would ignore distortion. -> (temperature or None, why)."""
    if undistorted is None:
        return None, "the face-geometry check did not run (--no-geometry), and the Frechet distance ignores distortion"
    clean = [t for t in frechet if undistorted[t] >= min_undistorted]
    if not clean:
        return None, f"at no temperature did {min_undistorted:.0%} of the samples pass the face-geometry check"
    best = min(clean, key=lambda t: frechet[t])
    return best, (f"the lowest Frechet distance ({frechet[best]:.2f}) among the temperatures at which at least "
                  f"{min_undistorted:.0%} of the samples pass the face-geometry check ({undistorted[best]:.0%} here)")


def percent(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.0%}"


def plot_flip_rates(after: Mapping[str, list[dict]], before: Mapping[str, list[dict]] | None, path) -> None:
    """Flip rate against slider value, one line per slider (solid: calibrated defaults; dashed dots: before)."""
    from flow_model.visualize import pyplot, save_figure

    plt = pyplot()
    labels = list(after)
    cols = 5
    rows = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.4, rows * 2.0), sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels):
        xs = [r["value"] for r in after[label]]
        ax.plot(xs, [r["flip"] for r in after[label]], "o-", color="C0", label="calibrated")
        if before and label in before:
            ax.plot([r["value"] for r in before[label]], [r["flip"] for r in before[label]], "s--", color="C1",
                    alpha=0.8, label="before")
        ax.axhline(TARGET_FLIP, color="0.6", lw=0.8, ls=":")
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7, loc="lower left")
    for ax in axes[-1]:
        ax.set_xlabel("slider value")
    for ax in axes[:, 0]:
        ax.set_ylabel("flip rate")
    save_figure(fig, path)


def steer_label(steer: Mapping[str, float] | Sequence[tuple[str, float]]) -> str:
    """A slider's counter-steer as the tables show it: "Male -0.27" per attribute, "-" for none."""
    return ", ".join(f"{a} {k:+g}" for a, k in dict(steer).items()) or "-"


def slider_table(results: Mapping[str, list[dict]], service: EditorService, value: float = 1.0) -> str:
    checked = all("intact" in r for rows in results.values() for r in rows)
    lines = ["| slider | method | scale | kept fixed | counter-steer | edits | default | P before -> after | shift | "
             "moved | flip (n) | leak Male | leak Young | leak Smiling | largest other leak | pixel change | back-off |"
             + (" face intact |" if checked else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if checked else "")]
    for label, rows in results.items():
        spec = service.slider(label)
        r = next(r for r in rows if r["value"] == value)
        leak = r["leakage"]
        lines.append(
            f"| {label} | {spec.method} | {spec.scale:g} | {', '.join(spec.keep) or '-'}"
            f"{f' (by {held_by(spec)})' if held_by(spec) else ''} | "
            f"{steer_label(spec.steer)} | "
            f"{spec.region if spec.local else 'whole face'} | {'yes' if spec.default else 'no'} | "
            f"{r['p_before']:.0%} -> {r['p_after']:.0%} | {r['shift']:+.2f} | "
            f"{percent(r['moved'])} | {percent(r['flip'])} ({r['flip_n']}) | "
            + " | ".join(f"{leak[a]:.3f}" if a in leak else "-" for a in LEAK_ATTRIBUTES)
            + f" | {r['max_leak_attribute']} {r['max_leak']:.3f} | {r['pixel']:.1f} | {percent(r['backoff'])} |"
            + (f" {percent(r['intact'])} |" if checked else ""))
    return "\n".join(lines)


def flip_table(results: Mapping[str, list[dict]]) -> str:
    values = [r["value"] for r in next(iter(results.values()))]
    head = "| slider | " + " | ".join(f"flip at {v:+g}" for v in values) + " | " + \
        " | ".join(f"moved at {v:+g}" for v in values) + " |"
    lines = [head, "|---|" + "---|" * (2 * len(values))]
    for label, rows in results.items():
        lines.append(f"| {label} | " + " | ".join(percent(r["flip"]) for r in rows) + " | "
                     + " | ".join(percent(r["moved"]) for r in rows) + " |")
    return "\n".join(lines)


def before_after_table(before: Mapping[str, list[dict]], after: Mapping[str, list[dict]]) -> str:
    lines = ["| slider | flip at +1 before | after | flip at -1 before | after | moved at +1 before | after | "
             "leak Male at +1 before | after | largest leak at +1 before | after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for label in after:
        if label not in before:
            continue
        b = {r["value"]: r for r in before[label]}
        a = {r["value"]: r for r in after[label]}
        lm = [x[1.0]["leakage"].get("Male") for x in (b, a)]
        lines.append(f"| {label} | {percent(b[1.0]['flip'])} | {percent(a[1.0]['flip'])} | "
                     f"{percent(b[-1.0]['flip'])} | "
                     f"{percent(a[-1.0]['flip'])} | {percent(b[1.0]['moved'])} | {percent(a[1.0]['moved'])} | "
                     + " | ".join("-" if v is None else f"{v:.3f}" for v in lm)
                     + f" | {b[1.0]['max_leak_attribute']} {b[1.0]['max_leak']:.3f} | "
                     f"{a[1.0]['max_leak_attribute']} {a[1.0]['max_leak']:.3f} |")
    return "\n".join(lines)


class TargetFigure(NamedTuple):
    """One of the issue's figures for a slider at +1, with its 95% interval over the faces it was measured on."""

    name: str  # "moved", "flip" or "<attribute> leak"
    value: float
    low: float
    high: float
    line: float
    at_least: bool  # the target is value >= line (moved, flip); else value <= line (leakage)

    @property
    def met(self) -> bool:
        """A figure that was not measured (NaN) misses: the target cannot be shown met."""
        return self.value >= self.line if self.at_least else self.value <= self.line

    @property
    def decided(self) -> bool:
        """Whether the line lies outside the interval: another draw of as many faces would most likely give the
        same verdict (always, for a figure not measured, whose interval is NaN)."""
        return not self.low <= self.line <= self.high

    def text(self, interval: bool = True) -> str:
        """"Male leak 0.064 > 0.05 (0.046 to 0.082)": the figure, the line it misses, and its interval."""
        if math.isnan(self.value):
            return f"{self.name} not measured (no face started on the other side)"
        pct = self.name in ("moved", "flip")
        fmt = (lambda v: f"{v:.0%}") if pct else (lambda v: f"{v:.3f}")  # noqa: E731
        line = f"{self.line:.0%}" if pct else f"{self.line:g}"
        compare = "" if self.met else (" < " if self.at_least else " > ") + line
        return f"{self.name} {fmt(self.value)}{compare}" + (f" ({fmt(self.low)} to {fmt(self.high)})" if interval
                                                           else "")


def target_figures(row: Mapping, attribute: str, z: float = VERDICT_Z) -> list[TargetFigure]:
    """The issue's figures for a slider's +1 measures (edit_measures): the moved share and the flip rate with their
    Wilson intervals, the leakage into the issue's lines (target_leaks) as mean +- z standard errors. A flip that
    was not measured (no face started on the other side) is NaN with a NaN interval: a decided miss."""
    moved, flip, n = row["moved"], row["flip"], row["flip_n"]
    flip_interval = (math.nan, math.nan) if math.isnan(flip) else wilson_interval(round(flip * n), n, z)
    figures = [TargetFigure("moved", moved, *wilson_interval(round(moved * row["n"]), row["n"], z), MIN_MOVED, True),
               TargetFigure("flip", flip, *flip_interval, TARGET_FLIP, True)]
    for a in target_leaks(attribute):
        if a in row["leakage"]:
            m, se = row["leakage"][a], row["leakage_se"][a]
            figures.append(TargetFigure(f"{a} leak", m, max(0.0, m - z * se), m + z * se, MAX_LEAKAGE, False))
    return figures


def target_misses(row: Mapping, attribute: str) -> list[str]:
    """The issue's targets a slider's +1 measures (edit_measures) miss, each with its figure; [] when it meets them.
    A flip that was not measured misses."""
    return [f.text(interval=False) for f in target_figures(row, attribute) if not f.met]


def targets_summary(after: Mapping[str, list[dict]], service: EditorService) -> str:
    """The issue's targets, checked per default slider at +1, each figure with its 95% interval; then which
    verdicts the intervals decide and which another draw of as many faces could turn."""
    out, verdicts = [], {}
    for label, rows in after.items():
        spec = service.slider(label)
        if not spec.default:
            continue
        r = next(r for r in rows if r["value"] == 1.0)
        figures = target_figures(r, spec.attribute)
        missed = [f.text() for f in figures if not f.met]
        close = [f.text() for f in figures if f.met and not f.decided]
        line = f"- {label}: " + ("; ".join(missed) if missed else "meets all targets")
        if close:
            line += "; met within noise of the line: " + "; ".join(close)
        if r.get("intact", 1.0) < MIN_INTACT:  # not one of the targets, but what the calibration demands
            line += f" (and only {r['intact']:.0%} of the faces stay intact)"
        out.append(line)
        clear_miss = any(not f.met and f.decided for f in figures)
        verdicts[label] = ("misses" if clear_miss else "misses within noise" if missed
                           else "meets within noise" if close else "meets")
    words = {"meets": "meet every target clear of its line",
             "meets within noise": "meet every target, at least one only within noise of its line",
             "misses within noise": "miss targets only within noise of their lines",
             "misses": "miss at least one target clear of its line"}
    out.append(f"\nIn brackets, each figure's 95% interval over these faces (Wilson for the shares, mean +- "
               f"{VERDICT_Z:g} standard errors for the leakage): where a line lies inside it, another draw of as many "
               f"faces could give the other verdict. Of the {len(verdicts)} default sliders:")
    for v, text in words.items():
        names = [k for k, g in verdicts.items() if g == v]
        out.append(f"- {len(names)} {text}" + (f": {', '.join(names)}" if names else ""))
    return "\n".join(out)

"""Is a custom slider real? The evaluate-edits measures, cross-validated on the user's own photos.

A slider fitted on a handful of photos can separate them by anything they happen to share (lighting, pose, the same
few people) rather than by the property. So each of k folds refits the direction on the other photos, with the
slider's own fitting code (EditorService.fit_direction), and measures it on the photos it never saw:

- separation: the held-out AUC of the projection on the fold's direction (sklearn's roc_auc_score);
- the edit: held-out faces without the property at +1, those with it at -1, through the editor's decode with its
  back-off (edit_evaluation.decode_with_backoff, as EditorService.edit); the edited face is encoded again and read
  by the fold's linear probe (its direction, threshold midway between the two groups' mean projections): share
  moved the intended way and flip rate (crossed the threshold), the arithmetic of edit_evaluation.edit_measures;
- leakage into Male, Young and Smiling as the attribute classifier reads them (mean |dP|), when one is loaded;
- mean pixel change.

No classifier knows a user's property, so the probe that reads the edit is the fold's own: a flip says the edit
moves a face the user never labelled across the line the other photos drew, and survives decoding and encoding
again; whether it looks like the property is for the user's eyes (and the leakage shows what else it moved).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from .calibration import MAX_LEAKAGE
from .edit_evaluation import LEAK_ATTRIBUTES, decode_with_backoff, edit_measures
from .service import Check, EditorService, Progress, checkpoint

MIN_PER_SIDE = 2  # a fold needs a held-out photo and a training photo on each side
MAX_FOLDS = 5
FEW_PHOTOS = 5  # below this per side the figures are too rough to tell
CLEAR_AUC = 0.8
WEAK_AUC = 0.65

Fit = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fold_of(n: int, k: int) -> np.ndarray:
    """Photo i of a side is held out in fold i mod k: every fold holds out at least one photo of each side when
    k <= the smaller side, and the split is the same on every run."""
    return np.arange(n) % k


@dataclass
class CrossValidation:
    """Held-out scores of k refitted directions. A score is the projection on the fold's direction minus the
    fold's threshold (midway between its training groups' mean projections), in units of their gap: the training
    groups sit at +-0.5 on average, so scores from different folds can be pooled."""

    labels: np.ndarray  # (N,) 1 = with the property; the "with" photos first, then the "without" ones
    scores: np.ndarray  # (N,) held-out scores
    folds: np.ndarray  # (N,) the fold that held each photo out
    vectors: torch.Tensor  # (k, D) each fold's slider vector (unit direction x gap, as fit_direction returns)
    thresholds: np.ndarray  # (k,) each fold's threshold on its unit direction
    auc: float  # pooled held-out AUC


def cross_validate(positives: torch.Tensor, negatives: torch.Tensor, fit: Fit, k: int | None = None,
                   progress: Progress | None = None, check: Check | None = None) -> CrossValidation:
    """k-fold cross-validation (k = min(MAX_FOLDS, smaller side) by default) of a direction fitted by `fit`."""
    n_pos, n_neg = len(positives), len(negatives)
    if min(n_pos, n_neg) < MIN_PER_SIDE:
        raise ValueError(f"too few photos to cross-validate the slider: it needs at least {MIN_PER_SIDE} with and "
                         f"{MIN_PER_SIDE} without the property, got {n_pos} and {n_neg}")
    k = k or min(MAX_FOLDS, n_pos, n_neg)
    if not 2 <= k <= min(n_pos, n_neg):
        raise ValueError(f"k must be in 2..{min(n_pos, n_neg)} (the smaller side), got {k}")
    latents = torch.cat([positives, negatives]).double()
    labels = np.r_[np.ones(n_pos), np.zeros(n_neg)]
    folds = np.r_[fold_of(n_pos, k), fold_of(n_neg, k)]
    scores = np.zeros(len(labels))
    vectors, thresholds = [], []
    for f in range(k):
        checkpoint(check)
        train, test = folds != f, folds == f
        pos, neg = latents[train & (labels == 1)], latents[train & (labels == 0)]
        v = fit(pos.float(), neg.float()).double()
        gap = float(v.norm())
        unit = v / gap
        threshold = float(((pos @ unit).mean() + (neg @ unit).mean()) / 2)
        scores[test] = ((latents[test] @ unit - threshold) / gap).numpy()
        vectors.append(v.float())
        thresholds.append(threshold)
        if progress is not None:
            progress(f + 1, k, f"cross-validating: fold {f + 1} of {k}")
    return CrossValidation(labels, scores, folds, torch.stack(vectors), np.array(thresholds),
                           float(roc_auc_score(labels, scores)))


@dataclass
class CustomCheck:
    """What cross-validation found about a custom slider, and a verdict in plain words for the user."""

    n_with: int
    n_without: int
    folds: int
    auc: float  # pooled held-out AUC of the projection
    moved: float  # share of held-out faces whose probe score moved the intended way at +-1
    flipped: int  # held-out faces that crossed the probe's threshold ...
    flip_n: int  # ... among those that started on the other side of it
    pixel: float  # mean |edit - reconstruction| in 0..255 levels
    reduced: int  # held-out edits shown at reduced strength (the model could not decode them in full)
    leakage: dict[str, float] = field(default_factory=dict)  # mean |dP| per attribute; empty without a classifier
    notes: list[str] = field(default_factory=list)

    @property
    def flip(self) -> float:
        return self.flipped / self.flip_n if self.flip_n else math.nan

    @property
    def few(self) -> bool:
        return min(self.n_with, self.n_without) < FEW_PHOTOS

    @property
    def verdict(self) -> str:
        """One paragraph: does the slider separate unseen faces, does its edit carry them across, what else moves."""
        n = self.n_with + self.n_without
        parts = []
        if self.few:
            parts.append(f"Too few photos to tell ({self.n_with} with, {self.n_without} without; {FEW_PHOTOS} or "
                         "more of each are needed before these figures mean much), so read them as a rough guess.")
        if self.auc >= CLEAR_AUC:
            sep = "the slider separates faces it never saw"
        elif self.auc >= WEAK_AUC:
            sep = "the slider separates faces it never saw only weakly"
        else:
            sep = ("the slider's line does not tell faces it never saw apart (0.5 is chance): it is fitted to what "
                   "these particular photos differ by (lighting, pose, the people in them) at least as much as to "
                   "the property; more, and more varied, photos may help")
        parts.append(f"Held-out AUC {self.auc:.2f} over {n} photos ({self.folds}-fold): {sep}.")
        edit = (f"at +1 on faces without the property and -1 on faces with it, the slider moved {self.moved:.0%} "
                f"of the held-out faces the intended way (mean pixel change {self.pixel:.1f} levels)")
        if self.flip_n:
            edit += (f" and carried {self.flipped} of the {self.flip_n} that started on their own side of its line "
                     "across to the other side")
        parts.append(edit[0].upper() + edit[1:] + ".")
        if self.reduced:
            parts.append(f"{self.reduced} of those edits could only be shown at reduced strength.")
        if self.leakage:
            name, value = max(self.leakage.items(), key=lambda kv: kv[1])
            if value > MAX_LEAKAGE:
                parts.append(f"It also moved {name} by {value:.2f} (the attribute classifier's probability): unless "
                             f"that is part of the property, hold {name} fixed (Disentangle).")
            else:
                parts.append("It barely moved " + ", ".join(self.leakage) + f" (at most {value:.2f}).")
        parts += self.notes
        return " ".join(parts)


def _probe_probability(latents: torch.Tensor, units: torch.Tensor, thresholds: torch.Tensor,
                       gaps: torch.Tensor) -> torch.Tensor:
    """Each row's probe score as a probability, 0.5 at its fold's threshold, so edit_measures reads it."""
    return torch.sigmoid(((latents.double() * units).sum(1) - thresholds) / gaps)


@torch.inference_mode()
def reencode(service: EditorService, images: torch.Tensor) -> torch.Tensor:
    """Flat standardised latents (N, D) of uint8 images, in one model pass (as encode_faces does)."""
    model = service.model
    return model.flatten_latents(model.encode(images.to(service.device), standardized=True)).float().cpu()


def check_custom_slider(service: EditorService, latents_with: torch.Tensor, latents_without: torch.Tensor,
                        progress: Progress | None = None, check: Check | None = None) -> CustomCheck:
    """Cross-validate a custom slider on the latents it was fitted from (CustomDirection.latents_with/_without).
    The held-out edits of every fold are decoded, encoded again and read together, in one batch each; progress
    counts the folds and then that step."""
    def fold_done(done: int, folds: int, what: str) -> None:
        if progress is not None:
            progress(done, folds + 1, what)

    cv = cross_validate(latents_with, latents_without,
                        lambda pos, neg: service.fit_direction(pos, neg, min_examples=1), progress=fold_done,
                        check=check)
    if progress is not None:
        progress(len(cv.vectors), len(cv.vectors) + 1, "editing the held-out faces with their fold's slider")
    latents = torch.cat([latents_with, latents_without]).float()
    labels = torch.from_numpy(cv.labels).bool()
    folds = torch.from_numpy(cv.folds)
    vectors = cv.vectors[folds]  # (N, D): each photo's own fold's slider
    value = torch.where(labels, -1.0, 1.0)  # with -> -1, without -> +1
    checkpoint(check)
    before = service.decode(latents)
    after, strength = decode_with_backoff(service, latents, latents + value[:, None] * vectors, check)
    checkpoint(check)
    moved_latents = reencode(service, after)

    gaps = vectors.double().norm(dim=1)
    units = vectors.double() / gaps[:, None]
    thresholds = torch.from_numpy(cv.thresholds)[folds]
    p0 = _probe_probability(latents, units, thresholds, gaps)[:, None]
    p1 = _probe_probability(moved_latents, units, thresholds, gaps)[:, None]
    leak, notes = {}, []
    classifier = service.classifier
    if classifier is not None and classifier.config.image_size == service.image_size:
        names = classifier.attributes
        leak = {a: 1 + names.index(a) for a in LEAK_ATTRIBUTES if a in names}
        p0 = torch.cat([p0, classifier.predict(before)[0]], 1)
        p1 = torch.cat([p1, classifier.predict(after)[0]], 1)
    else:
        notes.append("Leakage into " + ", ".join(LEAK_ATTRIBUTES) + " was not measured: this editor has no "
                     "attribute classifier for its image size loaded.")

    moved, flipped, flip_n = 0.0, 0, 0
    leakage = dict.fromkeys(leak, 0.0)
    for rows, direction in ((~labels, 1.0), (labels, -1.0)):
        m = edit_measures(p0[rows], p1[rows], 0, direction, leak)
        share = float(rows.double().mean())
        moved += m["moved"] * share
        if m["flip_n"]:
            flipped += round(m["flip"] * m["flip_n"])
            flip_n += m["flip_n"]
        for name in leakage:
            leakage[name] += m["leakage"][name] * share
    return CustomCheck(len(latents_with), len(latents_without), len(cv.vectors), cv.auc, moved, flipped, flip_n,
                       float((after.float() - before.float()).abs().mean()),
                       int((strength < 1).sum()), leakage, notes)

"""Does an edit fitted within each gender drag gender less than the shipped one, at equal flip?

    python -m experiments conditional-edits --out experiments/conditional_edits.md

The editor's directions are fitted over all training faces, so an attribute that CelebA pairs with one gender (blond
hair and make-up with women, age and beards with men) carries some of that gender in its class-mean difference. The
sliders' holds remove gender's linear read-outs from the edit, yet the attribute classifier's reading of Male still
moves (experiments/leakage_floor.md). A difference of class means taken among men only, or among women only, holds
no gender gap by construction. Three edits per slider, each made orthogonal to the directions the shipped slider
holds fixed, the same way:

- *linear*: the shipped edit (its method, scale and holds), at multiples of its +1;
- *matched*: the attribute's class-mean difference within each gender, averaged with weights n+ n- / (n+ + n-): one
  vector for every face (docs/edits.md's session-6 "matched" fit, by gender alone);
- *by gender*: per face, the men's and the women's class-mean differences mixed by the face's own reading of its
  gender from the latent (a one-dimensional logistic regression on the directions' Male classifier normal, fitted on
  the same training faces): a man gets the blond hair of blond men. A gender with fewer than `min_count` faces on
  either side of the attribute (beards among women, make-up among men) takes the other gender's difference.

The matched and by-gender vectors are multiplied by the slider's calibrated mean-difference scale (class-mean gaps),
so x1 moves the gap the shipped mean difference would. Everything is fitted on the model's training faces, as the
directions are, and measured on validation faces of the first half past the 96 that calibration uses: neither
calibration's faces nor the report's. The comparison is leakage at equal flip, read off each method's own curve
(experiments/latent_walk.py's leak_at_flip), and each method's highest flip over its strengths.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from app.classifier import AttributeClassifier
from app.directions import encode_images
from app.edit_evaluation import (LEAK_ATTRIBUTES, decoded_or_unedited, encode_faces, measure_vector,
                                 validation_halves)
from app.service import SLIDER_BY_LABEL, orthogonalize
from flow_model.data import load_images, open_dataset, select
from flow_model.fileio import write_text

from .ablation import kept_account
from .latent_walk import comparisons, load_for_sliders, plot

log = logging.getLogger(__name__)

METHODS = ("linear", "matched", "by gender")
STRENGTHS = (0.6, 0.8, 1.0, 1.25, 1.5, 2.0)
SLIDERS = ("Age", "Pale skin", "Eyeglasses", "Blond hair", "Heavy makeup", "Brown hair", "Beard", "Narrow eyes")
CALIBRATION_FACES = 96  # evaluate-edits' default --calibration-faces: the first half's faces calibration uses
MIN_COUNT = 40
ACCOUNT_PROMPT = "what the numbers show: does a difference of class means within each gender leak less at equal flip"


@dataclass
class GroupDifference:
    """An attribute's class-mean difference among one group of faces; None where a side has fewer than min_count."""

    vector: torch.Tensor | None
    n_pos: int
    n_neg: int


def group_differences(z: np.ndarray, has: np.ndarray, groups: dict[str, np.ndarray],
                      min_count: int = MIN_COUNT) -> dict[str, GroupDifference]:
    """Per group (a boolean mask over the faces): mean latent of the faces with the attribute minus those without."""
    out = {}
    for name, rows in groups.items():
        pos, neg = rows & has, rows & ~has
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        vector = None
        if min(n_pos, n_neg) >= min_count:
            vector = torch.from_numpy(pos.astype(np.float32) @ z / n_pos - neg.astype(np.float32) @ z / n_neg)
        out[name] = GroupDifference(vector, n_pos, n_neg)
    return out


def matched(diffs: dict[str, GroupDifference]) -> torch.Tensor:
    """The groups' differences averaged with weights n+ n- / (n+ + n-) (a mean difference's inverse variance)."""
    usable = {k: d for k, d in diffs.items() if d.vector is not None}
    if not usable:
        raise ValueError("no group has enough faces on each side of the attribute (with / without): "
                         + ", ".join(f"{k} {d.n_pos}/{d.n_neg}" for k, d in diffs.items()))
    weights = {k: d.n_pos * d.n_neg / (d.n_pos + d.n_neg) for k, d in usable.items()}
    return sum(w * usable[k].vector for k, w in weights.items()) / sum(weights.values())


@dataclass
class GenderReader:
    """P(male | latent) from the projection on one unit direction: a one-dimensional logistic regression."""

    unit: torch.Tensor
    coef: float
    intercept: float

    @classmethod
    def fit(cls, z: np.ndarray, male: np.ndarray, normal: torch.Tensor) -> tuple["GenderReader", float]:
        """Fitted on the faces' projections; -> the reader and its accuracy on those faces."""
        unit = (normal / normal.norm()).float()
        s = (z @ unit.numpy())[:, None]
        lr = LogisticRegression().fit(s, male)
        return cls(unit, float(lr.coef_[0, 0]), float(lr.intercept_[0])), float(lr.score(s, male))

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.coef * (z.float() @ self.unit) + self.intercept)


def by_gender(p_male: torch.Tensor, men: torch.Tensor, women: torch.Tensor) -> torch.Tensor:
    """(N, D) per-face edits: the men's and the women's difference mixed by each face's P(male)."""
    return p_male[:, None] * men[None] + (1 - p_male)[:, None] * women[None]


def gender_vectors(diffs: dict[str, GroupDifference]) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The men's and the women's differences, a gender without enough faces taking the other's; -> and the genders
    that did."""
    men, women = diffs["men"].vector, diffs["women"].vector
    if men is None and women is None:
        matched(diffs)  # raises, naming the counts
    borrowed = [k for k, v in (("men", men), ("women", women)) if v is None]
    return (men if men is not None else women), (women if women is not None else men), borrowed


def measure(model: Path, classifier_dir: Path, data_dir: Path, faces: int, sliders: list[str],
            strengths: tuple[float, ...] = STRENGTHS, fit_faces: int | None = None, min_count: int = MIN_COUNT,
            seed: int = 0) -> dict:
    """Fits the groups' differences and the gender reader on the training faces, then measures every method on
    `faces` validation faces outside calibration's and the report's; -> the results `render` writes."""
    started = time.perf_counter()
    service, split = load_for_sliders(model, sliders)
    data = open_dataset(data_dir)
    if data.labels is None or "Male" not in data.attributes:
        raise ValueError(f"{data_dir} has no Male labels: the groups need them")
    train = sorted(split["train"])
    if fit_faces is not None:
        train = [train[i] for i in np.sort(np.random.default_rng(seed).permutation(len(train))[:fit_faces])]
    images, kept = load_images(select(data, train), service.image_size, workers=2, progress=False)
    with torch.inference_mode():
        z = encode_images(service.model, images, progress=False)
    labels = kept.labels > 0
    male = labels[:, kept.attributes.index("Male")]
    reader, reader_accuracy = GenderReader.fit(z, male, service.directions.vector("Male", "classifier"))
    log.info("encoded %d training faces; gender reader accuracy %.3f", len(z), reader_accuracy)

    classifier = AttributeClassifier.from_pretrained(classifier_dir)
    first = validation_halves(split["val"], seed)[0][CALIBRATION_FACES:CALIBRATION_FACES + faces]
    if not first:
        raise ValueError(f"the first validation half has no faces past the {CALIBRATION_FACES} calibration uses")
    images, _ = load_images(select(data, first), service.image_size, workers=0, progress=False)
    face_set = encode_faces(service, classifier, images)
    p_male = reader(face_set.latents)
    rows, fits = [], {}
    for label in sliders:
        spec, calibrated = SLIDER_BY_LABEL[label], service.slider(label)
        diffs = group_differences(z, labels[:, kept.attributes.index(spec.attribute)],
                                  {"men": male, "women": ~male}, min_count)
        men, women, borrowed = gender_vectors(diffs)
        hold = calibrated.hold_method or calibrated.method
        held_names = [k for k in calibrated.keep if k != spec.attribute]
        held = torch.cat([service.held(k, hold) for k in held_names]) if held_names else None
        scale = spec.sign * calibrated.scale_for("mean_diff")
        shipped = service.edit_vectors([label], latent=face_set.latents)[0] * service.multiplier(label, 1.0)
        vectors = {"linear": shipped.expand(len(face_set.latents), -1),
                   "matched": scale * matched(diffs)[None], "by gender": scale * by_gender(p_male, men, women)}
        for method in ("matched", "by gender"):
            if held is not None:
                vectors[method] = orthogonalize(vectors[method].expand(len(face_set.latents), -1), held)
        fits[label] = {"counts": {k: [d.n_pos, d.n_neg] for k, d in diffs.items()}, "borrowed": borrowed,
                       "held": held_names, "hold": hold}
        mask = service.edit_mask([label])
        for s in strengths:
            for method in METHODS:
                shown, ok = decoded_or_unedited(service, face_set, face_set.latents + s * vectors[method], mask)
                m = measure_vector(service, classifier, face_set, shipped, s, spec.attribute, spec.sign,
                                   backoff=False, edited=(shown, ok))
                rows.append({"slider": label, "method": method, "strength": s, "flip": m["flip"],
                             "moved": m["moved"], "leakage": m["leakage"], "drift": m["drift"],
                             "pixel": m["pixel"], "undecoded": float(1 - ok.mean()), "held": held_names})
                log.info("%-13s x%-4g %-9s flip %.2f moved %.2f %s", label, s, method, m["flip"], m["moved"],
                         " ".join(f"{a} {v:.3f}" for a, v in m["leakage"].items()))
    return {"model": str(model), "faces": len(face_set.latents), "fit_faces": len(z), "min_count": min_count,
            "reader_accuracy": reader_accuracy, "fits": fits, "rows": rows,
            "minutes": (time.perf_counter() - started) / 60}


def write_report(results: dict, out: Path) -> None:
    """The markdown page, its plot and its raw JSON beside it; a hand-written `## Account` is kept."""
    write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    plot(results, out.with_suffix(".png"), METHODS)
    write_text(out, render(results, out) + "\n" + kept_account(out, ACCOUNT_PROMPT))


def render(results: dict, out: Path) -> str:
    fmt = lambda v: "-" if v != v else f"{v:.3f}"  # noqa: E731  (NaN: outside the method's measured flips)
    pct = lambda v: "-" if v != v else f"{v:.0%}"  # noqa: E731
    lines = ["# Edits fitted within each gender against the shipped edits\n",
             f"Written by `python -m experiments conditional-edits --model {results['model']} --out {out}` "
             f"({results['minutes']:.0f} min); raw numbers: [{out.with_suffix('.json').name}]"
             f"({out.with_suffix('.json').name}). The methods are described in the module's docstring "
             "(experiments/conditional_edits.py).\n",
             f"Fitted on {results['fit_faces']} training faces; the gender reader (the latent's projection on the "
             f"Male classifier normal) is right on {results['reader_accuracy']:.1%} of them. Measured on "
             f"{results['faces']} validation faces that neither calibration nor the report uses, every edit through "
             "the checked decode (one that does not decode shows the face unedited, as calibration counts it).\n",
             "## Leakage at equal flip\n",
             "For each slider, the shipped edit's flip at +1 and each method's leakage in the issue's lines where its "
             "own curve reaches that flip, then where it reaches 60%; last, each method's highest flip over its "
             "strengths:\n",
             "| slider | flip of the shipped +1 | line | " + " | ".join(METHODS) + " | "
             + " | ".join(f"{m}, at 60%" for m in METHODS) + " | " + " | ".join(f"highest flip, {m}" for m in METHODS)
             + " |", "|---|---|---|" + "---|" * 3 * len(METHODS)]
    for c in comparisons(results, METHODS):
        for a in c["lines"]:
            lines.append(f"| {c['slider']} | {c['flip']:.0%} | {a} | "
                         + " | ".join(fmt(c["leak"][m][a]) for m in METHODS) + " | "
                         + " | ".join(fmt(c["leak_at_target"][m][a]) for m in METHODS) + " | "
                         + " | ".join(pct(c["peak_flip"][m]) for m in METHODS) + " |")
    lines += ["", f"![leakage into Male against flip]({out.with_suffix('.png').name})\n", "## The fits\n",
              "Training faces with / without the attribute, per gender (a gender under "
              f"{results['min_count']} on a side borrows the other's difference for *by gender*):\n",
              "| slider | men | women | borrowed | held (by) |", "|---|---|---|---|---|"]
    for label, f in results["fits"].items():
        lines.append(f"| {label} | {f['counts']['men'][0]} / {f['counts']['men'][1]} | "
                     f"{f['counts']['women'][0]} / {f['counts']['women'][1]} | {', '.join(f['borrowed']) or '-'} | "
                     f"{', '.join(f['held']) or '-'} ({f['hold']}) |")
    lines += ["", "## Every measurement\n", "| slider | strength | method | flip | moved | "
              + " | ".join(LEAK_ATTRIBUTES) + " | drift of Male | pixel change | not decoded |",
              "|---|---|---|---|---|" + "---|" * len(LEAK_ATTRIBUTES) + "---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['slider']} | {r['strength']:g} | {r['method']} | {pct(r['flip'])} | {r['moved']:.0%} | "
                     + " | ".join(fmt(r["leakage"].get(a, float("nan"))) for a in LEAK_ATTRIBUTES)
                     + f" | {r['drift'].get('Male', float('nan')):+.3f} | {r['pixel']:.1f} | {r['undecoded']:.0%} |")
    return "\n".join(lines) + "\n"

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
  gender from the latent: the directions file's method `within_gender` (app/directions.py: its gender reader is a
  one-dimensional logistic regression on the Male classifier normal, and a gender with too few faces on either
  side of the attribute, beards among women, make-up among men, takes the other gender's difference).

The matched and by-gender vectors are multiplied by the slider's calibrated mean-difference scale (class-mean gaps),
so x1 moves the gap the shipped mean difference would. The differences come from the model's training faces, as
all its directions do; the edits are measured on validation faces of the first half past the 96 that calibration
uses: neither calibration's faces nor the report's. The comparison is leakage at equal flip, read off each method's own curve
(experiments/latent_walk.py's leak_at_flip), and each method's highest flip over its strengths.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from app.classifier import load_instrument
from app.directions import WITHIN_GENDER, Directions, own_hold
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
ACCOUNT_PROMPT = "what the numbers show: does a difference of class means within each gender leak less at equal flip"
GROUPS = {"pos": "men", "neg": "women"}  # the directions file's groups of the gender attribute, Male


def matched(directions: Directions, attribute: str) -> torch.Tensor:
    """The attribute's within-gender differences averaged with weights n+ n- / (n+ + n-) (a mean difference's
    inverse variance), over the genders that have their own (not borrowed from the other)."""
    fit = directions.info[attribute]["within_gender"]
    if fit["fallback"]:
        raise ValueError(f"{attribute} has no within-gender difference of its own (counts {fit['n']})")
    j = directions.names.index(attribute)
    weights = {k: n_pos * n_neg / (n_pos + n_neg) for k, (n_pos, n_neg) in fit["n"].items()
               if k not in fit["borrowed"]}
    return sum(w * directions.within_gender[k][j] for k, w in weights.items()) / sum(weights.values())


def measure(model: Path, classifier_dir: Path, data_dir: Path, faces: int, sliders: list[str],
            strengths: tuple[float, ...] = STRENGTHS, seed: int = 0) -> dict:
    """Every method on `faces` validation faces outside calibration's and the report's, with the within-gender
    differences and gender reader of the model's directions file (fitted on its training faces); -> the results
    `render` writes."""
    started = time.perf_counter()
    service, split = load_for_sliders(model, sliders)
    d = service.directions
    if WITHIN_GENDER not in d.methods:
        raise ValueError(f"{model}'s directions have no within-gender differences: refit them with `python -m app "
                         "directions`")
    data = open_dataset(data_dir)
    classifier = load_instrument(classifier_dir)
    first = validation_halves(split["val"], seed)[0][CALIBRATION_FACES:CALIBRATION_FACES + faces]
    if not first:
        raise ValueError(f"the first validation half has no faces past the {CALIBRATION_FACES} calibration uses")
    images, _ = load_images(select(data, first), service.image_size, workers=0, progress=False)
    face_set = encode_faces(service, classifier, images)
    rows, fits = [], {}
    for label in sliders:
        spec, calibrated = SLIDER_BY_LABEL[label], service.slider(label)
        hold = calibrated.hold_method or own_hold(calibrated.method)
        held_names = [k for k in calibrated.keep if k != spec.attribute]
        held = torch.cat([service.held(k, hold) for k in held_names]) if held_names else None
        scale = spec.sign * calibrated.scale_for("mean_diff")
        shipped = service.edit_vectors([label], latent=face_set.latents)[0] * service.multiplier(label, 1.0)
        vectors = {"linear": shipped.expand(len(face_set.latents), -1),
                   "matched": scale * matched(d, spec.attribute)[None],
                   "by gender": scale * d.vector(spec.attribute, WITHIN_GENDER, face_set.latents)}
        for method in ("matched", "by gender"):
            if held is not None:
                vectors[method] = orthogonalize(vectors[method].expand(len(face_set.latents), -1), held)
        fit = d.info[spec.attribute]["within_gender"]
        fits[label] = {"counts": {GROUPS[k]: n for k, n in fit["n"].items()},
                       "borrowed": [GROUPS[k] for k in fit["borrowed"]], "held": held_names, "hold": hold}
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
    male = d.info["Male"]["mean_diff"]
    return {"model": str(model), "faces": len(face_set.latents), "fit_faces": male["n_pos"] + male["n_neg"],
            "min_count": d.config.get("gender_min_count"), "reader_accuracy": d.gender_reader["accuracy"],
            "fits": fits, "rows": rows,
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

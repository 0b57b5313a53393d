"""How much of a slider's measured leakage is the edit, and how much is the instrument?

    python -m experiments leakage-floor --out experiments/leakage_floor.md

docs/edits.md reports leakage as the mean |dP| of Male, Young and Smiling read by the attribute classifier, and
issue 15 asks for at most 0.05. Two things other than the edit put a number there:

- the instrument's jitter: any change of pixels moves the classifier's reading a little, in either direction. A
  null edit (a random latent direction, drawn per face, scaled to the same mean pixel change as the slider) gives
  the mean |dP| that no disentangling can remove; the signed mean dP, by contrast, is what drags gender along;
- the instrument's confound: a classifier trained on CelebA may read glasses or make-up as evidence of gender.
  On real held-out faces, the difference of its P(Male) between faces with and without the attribute, among faces
  of the same labelled gender (averaged over the strata, weighted by the faces without the attribute), is what a
  perfect edit would still show as leakage.

And one thing a better linear hold could remove: the editor holds Male by making an edit orthogonal to one Male
normal in the latent, which keeps that normal's score but not other latent directions that also predict gender.
Iterative nullspace projection (INLP, Ravfogel et al. 2020) on training faces' latents finds them: fit a logistic
regression for Male on the latents projected off the directions found so far, add its normal, and repeat for a few
rounds while the held-out AUC shows linear information left (app/directions.py; the directions file carries the
basis the editor can hold Male by, and where it does, that one is used). Each slider is then measured again with its
edit made orthogonal to all of them: if its Male leakage barely moves, what remains lies outside the held directions
(the AUC trace says how much linear information they leave) or is the instrument's.

The faces and sliders are evaluate-edits' own: its report faces (`--faces` of the second half of a seed-0
permutation of the model's validation split; a release measures both pages on the same 256), each slider at +1
with the shipped calibration through the editor's checked decode, a local slider's edit kept to its region as the
editor keeps it (so its figures are docs/edits.md's).

Last, the Male leakage split by the instrument's reading of each face's gender before the edit. Leakage that comes
from one side only (women given a beard read as men, men given make-up read as women) may be the edit, or the
instrument reading faces its training set barely has (CelebA has almost no bearded women or made-up men): the
split says which faces to look at.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from app.classifier import Instrument, load_instrument
from app.directions import DirectionConfig, encode_images, nullspace_basis
from app.edit_evaluation import (LEAK_ATTRIBUTES, FaceSet, decode_with_backoff, edit_measures, encode_faces,
                                 validation_halves)
from app.service import EditorService, orthogonalize
from flow_model.data import load_images, open_dataset, select
from flow_model.fileio import write_text
from flow_model.glow import reduce_bits

from .ablation import kept_account

log = logging.getLogger(__name__)

NULL_SCALES = (0.5, 1.0, 2.0, 4.0, 8.0)  # latent norms of the random directions, in units of sqrt(dimension) / 10
ACCOUNT_PROMPT = "what the numbers show: which sliders drag gender, which sit at the instrument's floor"


def instrument_confound(probs: np.ndarray, labels: np.ndarray, attribute: int, sign: float, held: int,
                        min_count: int = 3) -> float:
    """Mean P(held) of faces with the attribute (sign -1: without it) minus faces without it, within each labelled
    value of `held`, averaged over the values weighted by the faces without the attribute. NaN if no stratum has
    min_count faces on both sides."""
    has = labels[:, attribute] > 0 if sign > 0 else labels[:, attribute] < 0
    total, weight = 0.0, 0
    for value in (-1, 1):
        stratum = labels[:, held] == value
        on, off = has & stratum, ~has & stratum
        if on.sum() >= min_count and off.sum() >= min_count:
            total += off.sum() * (probs[on, held].mean() - probs[off, held].mean())
            weight += off.sum()
    return total / weight if weight else float("nan")


def by_starting_gender(before: torch.Tensor, after: torch.Tensor, target: int, direction: float,
                       male: int) -> dict[str, dict]:
    """The edit's measures among the faces the instrument reads as men before it (P(Male) >= 0.5) and among those
    it reads as women: whose gender reading the edit moves, and for whom it flips the attribute. `share`: the
    group's part of the mean |dP(Male)| over all faces."""
    men = before[:, male] >= 0.5
    total = float((after[:, male] - before[:, male]).abs().sum())
    out = {}
    for name, group in (("men", men), ("women", ~men)):
        n = int(group.sum())
        if not n:
            out[name] = {"n": 0}
            continue
        m = edit_measures(before[group], after[group], target, direction, {"Male": male})
        out[name] = {"n": n, "flip": m["flip"], "flip_n": m["flip_n"], "abs": m["leakage"]["Male"],
                     "signed": m["drift"]["Male"], "share": m["leakage"]["Male"] * n / total if total else math.nan}
    return out


def readings(service: EditorService, classifier: Instrument, faces: FaceSet, edited: torch.Tensor,
             mask: torch.Tensor | None = None) -> tuple[torch.Tensor, float]:
    """The classifier's probabilities of the edits as the editor shows them (kept to `mask`, a local slider's
    region), and their mean pixel change."""
    images, _ = decode_with_backoff(service, faces.latents, edited, mask=mask, base_decoded=faces.decoded)
    return classifier.predict(images)[0], float((images.float() - faces.images.float()).abs().mean())


def null_floor(null: list[dict], pixel: float, attribute: str) -> float:
    """The null edits' mean |dP| of `attribute` at a given mean pixel change, linear between the measured scales
    (held at the ends: a slider outside the measured range gets the nearest null)."""
    rows = sorted(null, key=lambda r: r["pixel"])
    return float(np.interp(pixel, [r["pixel"] for r in rows], [r[attribute] for r in rows]))


def male_nullspace(service: EditorService, data, train: list[str], faces: int, rounds: int,
                   seed: int) -> tuple[torch.Tensor, list[float], str]:
    """The INLP basis for Male, its AUC trace and where it comes from: the model's directions file where it
    carries one (what the editor holds by), else fitted here on `faces` of the model's training faces (seeded
    choice; the last fifth scores each round)."""
    shipped = service.directions.nullspaces.get("Male")
    if shipped is not None:
        return shipped, service.directions.info["Male"]["nullspace"]["auc"], "the model's directions file"
    chosen = sorted(train)
    chosen = [chosen[i] for i in np.random.default_rng(seed).permutation(len(chosen))[:faces]]
    images, kept = load_images(select(data, chosen), service.image_size, workers=2, progress=False)
    latents = encode_images(service.model, images, progress=False)
    male = kept.labels[:, data.attributes.index("Male")] > 0
    first = service.directions.vector("Male", "classifier").double().numpy()
    cut = int(len(latents) * 0.8)
    basis, aucs = nullspace_basis(latents[:cut], male[:cut], latents[cut:], male[cut:], first,
                                  DirectionConfig(nullspace_rounds=rounds, nullspace_min_auc=0.5))
    return torch.from_numpy(basis).float(), aucs, f"{len(latents)} of the model's training faces"


def measure(model: Path, classifier_dir: Path, data_dir: Path, faces: int, boot: int, seed: int = 0,
            nullspace_rounds: int = 4, nullspace_faces: int = 4000) -> dict:
    """Null edits, every default slider at +1, the instrument's confound and, unless nullspace_rounds is 0, each
    slider held off Male's INLP nullspace; -> the results `render` writes."""
    started = time.perf_counter()
    service = EditorService.load(model, align=False)
    if service.directions is None:
        raise ValueError(f"{model} has no directions: no slider to measure")
    classifier = load_instrument(classifier_dir)
    names = classifier.attributes
    col = {a: names.index(a) for a in LEAK_ATTRIBUTES}
    val = json.loads((model / "split.json").read_text())["val"]
    data = open_dataset(data_dir)

    images, kept = load_images(select(data, val), service.image_size, workers=0, progress=False)
    probs = classifier.predict(reduce_bits(images, service.model.config.n_bits))[0].double().numpy()
    labels = kept.labels[:, [data.attributes.index(a) for a in names]]

    report = validation_halves(val, seed)[1][:faces]
    index = {n: i for i, n in enumerate(kept.names())}
    face_set = encode_faces(service, classifier, images[torch.tensor([index[n] for n in report if n in index])])
    noise = torch.randn(face_set.latents.shape, generator=torch.Generator().manual_seed(seed))
    noise = noise / noise.norm(dim=1, keepdim=True) * face_set.latents.shape[1] ** 0.5 / 10
    null = []
    for s in NULL_SCALES:
        p, pixel = readings(service, classifier, face_set, face_set.latents + s * noise)
        dp = p - face_set.probs
        null.append({"scale": s, "pixel": pixel, **{a: float(dp[:, j].abs().mean()) for a, j in col.items()}})
        log.info("null x%g: pixel %.1f %s", s, pixel, " ".join(f"{a} {null[-1][a]:.3f}" for a in col))

    basis, aucs, source = (male_nullspace(service, data, json.loads((model / "split.json").read_text())["train"],
                                          nullspace_faces, nullspace_rounds, seed) if nullspace_rounds
                           else (None, [], ""))
    if aucs:
        log.info("INLP for Male: held-out AUC %s", " -> ".join(f"{a:.3f}" for a in aucs))
    rng = np.random.default_rng(seed)
    rows = []
    for spec in service.sliders:
        vector = service.edit_vectors([spec.label], latent=face_set.latents)[0]  # (D,), or (N, D): one per face
        mask = service.edit_mask([spec.label])
        p, pixel = readings(service, classifier, face_set, face_set.latents + vector, mask)
        dp = (p - face_set.probs).double()
        row = {"slider": spec.label, "pixel": pixel, "held": {}}
        if spec.attribute != "Male":
            row["by_gender"] = by_starting_gender(face_set.probs, p, names.index(spec.attribute), spec.sign,
                                                  col["Male"])
        if basis is not None and spec.attribute != "Male":
            q, _ = readings(service, classifier, face_set,
                            face_set.latents + orthogonalize(vector.reshape(-1, vector.shape[-1]), basis), mask)
            dq = (q - face_set.probs).double()
            target = names.index(spec.attribute)
            row["nullspace"] = {"Male": float(dq[:, col["Male"]].abs().mean()),
                                "Male_signed": float(dq[:, col["Male"]].mean()),
                                "shift": float(spec.sign * dq[:, target].mean()),
                                "shift_before": float(spec.sign * dp[:, target].mean())}
        for a, j in col.items():
            if a == spec.attribute:
                continue
            conf = instrument_confound(probs, labels, names.index(spec.attribute), spec.sign, j)
            boots = [instrument_confound(probs[b], labels[b], names.index(spec.attribute), spec.sign, j)
                     for b in (rng.integers(0, len(probs), len(probs)) for _ in range(boot))]
            row["held"][a] = {"abs": float(dp[:, j].abs().mean()), "signed": float(dp[:, j].mean()),
                              "signed_se": float(dp[:, j].std() / len(dp) ** 0.5),
                              "null": null_floor(null, pixel, a), "confound": float(conf),
                              "confound_ci": [float(v) for v in np.nanpercentile(boots, [2.5, 97.5])]}
        rows.append(row)
        log.info("%-20s pixel %5.1f %s", spec.label, pixel, " ".join(
            f"{a} |{h['abs']:.3f}| {h['signed']:+.3f} null {h['null']:.3f} conf {h['confound']:+.3f}"
            for a, h in row["held"].items()))
    return {"model": str(model), "null": null, "sliders": rows, "faces": len(face_set.latents),
            "val_faces": len(probs),
            "nullspace": {"rows": 0 if basis is None else len(basis), "source": source, "auc": aucs},
            "minutes": (time.perf_counter() - started) / 60}


def write_report(results: dict, out: Path) -> None:
    """The markdown page and its raw JSON beside it; a hand-written `## Account` of an existing page is kept."""
    write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    write_text(out, render(results, out) + "\n" + kept_account(out, ACCOUNT_PROMPT))


def render(results: dict, out: Path) -> str:
    fmt = lambda v: "-" if v != v else f"{v:+.3f}"  # noqa: E731  (NaN: no stratum large enough)
    raw = out.with_suffix(".json").name
    lines = ["# Leakage: the edit, the instrument's jitter and its confound\n",
             f"Written by `python -m experiments leakage-floor --model {results['model']} --out {out}` "
             f"({results['minutes']:.0f} min); raw numbers: [{raw}]({raw}). What each column means is in the "
             "module's docstring (experiments/leakage_floor.py).\n",
             f"## Null edits: jitter of the instrument\n\nRandom latent directions, one per face, on the "
             f"{results['faces']} report faces; mean |dP| by mean pixel change (0-255 units).\n",
             "| pixel change | " + " | ".join(LEAK_ATTRIBUTES) + " |", "|---|" + "---|" * len(LEAK_ATTRIBUTES)]
    lines += [f"| {r['pixel']:.1f} | " + " | ".join(f"{r[a]:.3f}" for a in LEAK_ATTRIBUTES) + " |"
              for r in results["null"]]
    lines += ["", f"## Default sliders at +1\n\nPer held attribute: mean |dP| as docs/edits.md reports it; signed "
              f"mean dP (± standard error); the null edit's mean |dP| at the slider's pixel change; the instrument's "
              f"confound on the {results['val_faces']} validation faces (95% bootstrap interval).\n",
              "| slider | pixel change | attribute | mean abs dP | signed mean dP | null at this pixel change | "
              "instrument confound |", "|---|---|---|---|---|---|---|"]
    for r in results["sliders"]:
        for a, h in r["held"].items():
            lo, hi = h["confound_ci"]
            lines.append(f"| {r['slider']} | {r['pixel']:.1f} | {a} | {h['abs']:.3f} | {h['signed']:+.3f} ± "
                         f"{h['signed_se']:.3f} | {h['null']:.3f} | {fmt(h['confound'])} [{fmt(lo)}, {fmt(hi)}] |")
    split = [r for r in results["sliders"] if "by_gender" in r]
    if split:
        lines += ["", "## Whose gender reading moves\n\nThe same edits, the faces split by the instrument's reading "
                  "of their gender before the edit (P(Male) >= 0.5: read as men). Per group: mean |dP(Male)|, "
                  "signed mean dP(Male), the group's part of the slider's whole Male leakage, and the flip of the "
                  "slider's own attribute among the group's faces that started on the other side (their count).\n",
                  "| slider | men: Male abs dP | signed | part of the leakage | flip (n) | women: Male abs dP | "
                  "signed | part of the leakage | flip (n) |", "|---|---|---|---|---|---|---|---|---|"]
        for r in split:
            lines.append(f"| {r['slider']} | " + " | ".join(_gender_cells(r["by_gender"][g]) for g in ("men", "women"))
                         + " |")
    inlp = results.get("nullspace", {})
    if inlp.get("auc"):
        lines += ["", f"## Holding Male off its linear nullspace (INLP)\n\nThe basis from {inlp['source']}: the "
                  "held-out AUC for Male left in the latent after removing the editor's Male normal and then each "
                  "further normal: " + " -> ".join(f"{a:.3f}" for a in inlp["auc"]) + f". Each slider at +1 with "
                  f"its edit also orthogonal to the basis's {inlp['rows']} directions (rescaled to its norm), on the "
                  "same report faces:\n",
                  "| slider | Male mean abs dP, as shipped | held off the nullspace | signed, held off | "
                  "shift of its attribute, as shipped | held off |", "|---|---|---|---|---|---|"]
        for r in results["sliders"]:
            if "nullspace" in r:
                h = r["nullspace"]
                lines.append(f"| {r['slider']} | {r['held']['Male']['abs']:.3f} | {h['Male']:.3f} | "
                             f"{h['Male_signed']:+.3f} | {h['shift_before']:+.3f} | {h['shift']:+.3f} |")
    return "\n".join(lines) + "\n"


def _gender_cells(group: dict) -> str:
    """One group's four cells of the gender table; '-' where it has no faces, or nothing to divide by."""
    if not group["n"]:
        return " | ".join(["-"] * 4)
    flip = "-" if not group["flip_n"] else f"{group['flip']:.0%}"
    share = "-" if math.isnan(group["share"]) else f"{group['share']:.0%}"
    return f"{group['abs']:.3f} | {group['signed']:+.3f} | {share} | {flip} ({group['flip_n']})"

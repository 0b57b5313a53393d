"""How much the sliders' verdicts depend on the instrument that measures them.

docs/edits.md judges every default slider against the issue's targets (flip at +1 >= 60%, moved >= 95%, leakage
into Male <= 0.05, Young for Smiling) with one attribute classifier, trained once. This study scores the *same*
edits (every default slider at +1 with its shipped calibration, on evaluate-edits' report faces, decoded once the
way the editor shows them) with several classifiers in named groups, e.g. the same recipe trained from different
seeds, or with and without balancing (app.classifier.Balance). Per slider and group: each member's figures (their
mean, smallest and largest), the figures of the group's ensemble (the members' probabilities averaged), how many
members judge the slider to meet every target; and per group the instrument's confound (experiments.leakage_floor:
how far P(Male) of real faces with the slider's attribute differs from those without, within each labelled
gender). A target missed by one seed and met by another is decided by the instrument, not the slider.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from app.classifier import Instrument, load_instrument
from app.edit_evaluation import (LEAK_ATTRIBUTES, edit_measures, edited_images, encode_faces, target_leaks,
                                 target_misses, validation_halves)
from app.service import EditorService
from flow_model.data import load_images, open_dataset, select
from flow_model.fileio import write_text
from flow_model.glow import reduce_bits

from .ablation import kept_account
from .leakage_floor import instrument_confound

log = logging.getLogger(__name__)

ACCOUNT_PROMPT = "which verdicts the instrument decides, and which instrument docs/edits.md should use"
ENSEMBLE = "ensemble"


def load_groups(groups: Mapping[str, Sequence[Path]]) -> dict[str, list[Instrument]]:
    """Every group's classifiers, which must all read the same attributes (within a group and across groups)."""
    loaded = {name: [load_instrument(p) for p in paths] for name, paths in groups.items()}
    first = next(iter(loaded.values()))[0].attributes
    odd = [str(p) for name, paths in groups.items() for p, m in zip(paths, loaded[name]) if m.attributes != first]
    if odd:
        raise ValueError(f"the classifiers {odd} read different attributes than {groups[next(iter(groups))][0]}")
    return loaded


def scores(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], attributes: list[str], attribute: str,
           sign: float) -> dict:
    """Per member (probabilities of the same faces before and after) and for their ensemble (the mean probability):
    edit_measures of the issue's lines and whether every target is met."""
    leak = {a: attributes.index(a) for a in LEAK_ATTRIBUTES if a in attributes}
    target = attributes.index(attribute)

    def one(p0: torch.Tensor, p1: torch.Tensor) -> dict:
        m = edit_measures(p0, p1, target, sign, leak)
        return {"flip": m["flip"], "moved": m["moved"], "leakage": m["leakage"],
                "misses": target_misses(m, attribute)}

    members = [one(p0, p1) for p0, p1 in zip(before, after)]
    return {"members": members, ENSEMBLE: one(torch.stack(list(before)).mean(0), torch.stack(list(after)).mean(0))}


def measure(model: Path, groups: Mapping[str, Sequence[Path]], data_dir: Path, faces: int, seed: int = 0) -> dict:
    """Every default slider's +1 edit of `faces` report faces, scored by each group's members and ensemble; the
    groups' confounds on the validation faces."""
    started = time.perf_counter()
    service = EditorService.load(model, align=False)
    if service.directions is None:
        raise ValueError(f"{model} has no directions: no slider to measure")
    loaded = load_groups(groups)
    first = next(iter(loaded.values()))[0]
    names = first.attributes
    val = json.loads((model / "split.json").read_text())["val"]
    data = open_dataset(data_dir)
    images, kept = load_images(select(data, val), service.image_size, workers=0, progress=False)
    real = reduce_bits(images, service.model.config.n_bits)
    labels = kept.labels[:, [data.attributes.index(a) for a in names]]
    index = {n: i for i, n in enumerate(kept.names())}
    report = validation_halves(val, seed)[1][:faces]
    face_set = encode_faces(service, first, images[torch.tensor([index[n] for n in report if n in index])])
    readings = {g: [m.predict(face_set.images)[0] for m in members] for g, members in loaded.items()}
    real_probs = {g: [m.predict(real)[0].numpy() for m in members] for g, members in loaded.items()}
    truth = labels > 0
    accuracy = {}
    for g, probs in real_probs.items():
        readings_of = [*probs, np.mean(probs, axis=0)]  # each member, then the ensemble
        accuracy[g] = {a: [float(((p[:, j] >= 0.5) == truth[:, j]).mean()) for p in readings_of]
                       for j, a in enumerate(names) if a in LEAK_ATTRIBUTES}
        accuracy[g]["mean"] = [float(((p >= 0.5) == truth).mean()) for p in readings_of]
    sliders = []
    for spec in service.sliders:
        vector = service.edit_vectors([spec.label], latent=face_set.latents)[0]
        edited, _ = edited_images(service, face_set, vector, 1.0, mask=service.edit_mask([spec.label]))
        row = {"slider": spec.label, "attribute": spec.attribute, "lines": list(target_leaks(spec.attribute)),
               "groups": {}}
        for g, members in loaded.items():
            after = [m.predict(edited)[0] for m in members]
            row["groups"][g] = scores(readings[g], after, names, spec.attribute, spec.sign)
            probs = [*real_probs[g], np.mean(real_probs[g], axis=0)]
            row["groups"][g]["confound"] = {
                a: [float(instrument_confound(p, labels, names.index(spec.attribute), spec.sign, names.index(a)))
                    for p in probs] for a in row["lines"]}
        sliders.append(row)
        log.info("%-20s %s", spec.label, "  ".join(
            f"{g}: flip {r[ENSEMBLE]['flip']:.0%} meets {sum(not m['misses'] for m in r['members'])}/"
            f"{len(r['members'])}" for g, r in row["groups"].items()))
    return {"model": str(model), "faces": len(face_set.latents), "val_faces": len(real),
            "groups": {g: [str(p) for p in paths] for g, paths in groups.items()}, "sliders": sliders,
            "accuracy": accuracy,
            "minutes": (time.perf_counter() - started) / 60}


def write_report(results: dict, out: Path, command: str) -> None:
    """The markdown page and its raw JSON beside it; a hand-written `## Account` of an existing page is kept."""
    write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    write_text(out, render(results, out, command) + "\n" + kept_account(out, ACCOUNT_PROMPT))


def _spread(values: Sequence[float], fmt: str) -> str:
    v = [x for x in values if x == x]
    if not v:
        return "-"
    if len(v) == 1:
        return format(v[0], fmt)
    return f"{format(float(np.mean(v)), fmt)} ({format(min(v), fmt)} to {format(max(v), fmt)})"


def render(results: dict, out: Path, command: str) -> str:
    raw = out.with_suffix(".json").name
    groups = results["groups"]
    lines = ["# The instrument's part in the sliders' verdicts\n",
             f"Written by `{command}` ({results['minutes']:.0f} min); raw numbers: [{raw}]({raw}). The method is in "
             "the module's docstring (experiments/instruments.py).\n",
             f"The same edits (every default slider at +1, as shipped, on {results['faces']} report faces) scored by "
             "each classifier of each group; a figure reads: mean over the group's members (smallest to largest), "
             "then the group's ensemble (mean probability). Groups:\n"]
    lines += [f"- **{g}**: " + ", ".join(f"`{p}`" for p in paths) for g, paths in groups.items()]
    if "accuracy" in results:
        columns = list(next(iter(results["accuracy"].values())))
        lines += ["", f"## Held-out accuracy\n\nAt 0.5, on the {results['val_faces']} validation faces; "
                  "\"mean\" is over every attribute.\n", "| group | " + " | ".join(columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for g, acc in results["accuracy"].items():
            lines.append(f"| {g} | " + " | ".join(f"{_spread(v[:-1], '.3f')}; ensemble {v[-1]:.3f}"
                                                  for v in acc.values()) + " |")
    lines += ["", "## Verdicts\n", "Members judging the slider to meet every target of the issue, and the "
              "ensemble's verdict (what it misses).\n", "| slider | " + " | ".join(groups) + " |",
              "|---|" + "---|" * len(groups)]
    for row in results["sliders"]:
        cells = []
        for g in groups:
            r = row["groups"][g]
            ens = r[ENSEMBLE]["misses"]
            cells.append(f"{sum(not m['misses'] for m in r['members'])}/{len(r['members'])}; ensemble: "
                         + ("meets all" if not ens else "; ".join(ens)))
        lines.append(f"| {row['slider']} | " + " | ".join(cells) + " |")
    totals = []
    for g in groups:
        per_member = [sum(not row["groups"][g]["members"][i]["misses"] for row in results["sliders"])
                      for i in range(len(groups[g]))]
        ensemble = sum(not row["groups"][g][ENSEMBLE]["misses"] for row in results["sliders"])
        totals.append(f"{g}: {min(per_member)}-{max(per_member)} by a member, {ensemble} by the ensemble")
    lines += ["", f"Sliders meeting every target, of {len(results['sliders'])}: " + "; ".join(totals) + ".", "",
              "## Figures\n", "| slider | group | flip | ensemble | moved | ensemble | leak line | leakage | ensemble "
              "| confound | ensemble's confound |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["sliders"]:
        for g in groups:
            r = row["groups"][g]
            m, e = r["members"], r[ENSEMBLE]
            for a in row["lines"] or ["-"]:
                leak = [x["leakage"].get(a, float("nan")) for x in m] if a != "-" else []
                conf = r["confound"].get(a, [])
                lines.append(
                    f"| {row['slider']} | {g} | {_spread([x['flip'] for x in m], '.0%')} | {e['flip']:.0%} | "
                    f"{_spread([x['moved'] for x in m], '.0%')} | {e['moved']:.0%} | {a} | {_spread(leak, '.3f')} | "
                    + (f"{e['leakage'].get(a, float('nan')):.3f}" if a != "-" else "-")
                    + f" | {_spread(conf[:-1], '+.3f')} | " + (f"{conf[-1]:+.3f}" if conf else "-") + " |")
    return "\n".join(lines) + "\n"

"""Measure a trained run as the next release in a staging folder, then (with --install) put it in place.

    python scripts/release.py --run runs/celeba64_cooldown --stage /tmp/release
    python scripts/release.py --stage /tmp/release --install --keep-curve-as training_curve_release6.png
    python scripts/release.py --recalibrate --stage /tmp/recal && python scripts/release.py --stage /tmp/recal --install

The measuring pass runs, in order, every step a release needs (each a CLI of this project, logged to
STAGE/release.log): `build_assets.py` (weights, validation bits/dim, samples, curve), `app directions` on the
model's training faces, the edit strip, `bpd_range.py`, bits/dim on training faces (the train/held-out gap),
`app evaluate-edits --calibrate` (calibration, recommended temperature, docs/edits.md), `experiments
leakage-floor` and the slider sheet (`slider_sheet.py`: every calibrated slider at -2..+2 on three held-out faces,
STAGE/slider_sheet.png, to look at before installing; not installed). The pages keep their hand-written accounts:
the current docs/edits.md and experiments/leakage_floor.md are copied into the staging folder first. Nothing in
the checkout changes. `--recalibrate` instead measures a copy of the shipped model with the last three steps only
(what a change to the calibration or its checks needs; the weights and directions stay as shipped). `--resume`
continues an interrupted pass in its staging folder, from the first step release.log does not record as finished.

`--install` then copies the staged model into assets/celeba64 (all but MODEL_CARD.md, which is written by hand
from the numbers in release.log), the pages into docs/ and experiments/, with every staging path in them rewritten
to its installed one. Decide on the numbers first: a release replaces the shipped model only if it validates lower.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
MODEL = Path("assets/celeba64")
PAGES = {"edits": Path("docs/edits"), "leakage_floor": Path("experiments/leakage_floor")}
PAGE_FILES = {"edits": (".md", ".json", "_flip.png"), "leakage_floor": (".md", ".json")}
HAND_WRITTEN = {"MODEL_CARD.md"}
REPORT_FACES = "256"  # the second held-out half's faces the slider pages are measured on
# The gap's training faces: a random draw from the folder the validation faces were drawn from, so the two figures
# describe the same kind of face (the first files of img_align_celeba are nearly all stored at half resolution, which
# scores lower than the full-resolution ones; the _extra folder's faces score lower still).
TRAINING_FACES = ["--image-dirs", "img_align_celeba", "--sample", "2000"]
EVALUATE_EDITS = ["--faces", REPORT_FACES, "--calibration-faces", "96", "--calibrate", "--keep-probe", "2",
                  "--grid", "1,1.5,2,3,4,5,6", "--no-before", "--samples", "256"]


def steps(run: Path | None, data: Path, stage: Path, threads: int,
          curve: Sequence[str] = ()) -> list[tuple[str, list[str]]]:
    """(name, argv) of every measuring step, in order; without a run, those that read only the staged model.
    `curve` goes to build_assets.py (--curve-from/--curve-until)."""
    model, py = stage / MODEL.name, [sys.executable]
    split = model / "split.json"
    from_model = [
        ("calibration and slider figures",
         py + ["-m", "app", "evaluate-edits", "--model", str(model), "--data", str(data), *EVALUATE_EDITS,
               "--threads", str(threads), "--out", str(stage / "edits.md")]),
        ("leakage floor", py + ["-m", "experiments", "leakage-floor", "--model", str(model), "--data", str(data),
                                "--faces", REPORT_FACES, "--threads", str(threads),
                                "--out", str(stage / "leakage_floor.md")]),
        ("slider sheet", py + ["scripts/slider_sheet.py", "--model", str(model), "--data", str(data), "--split",
                               str(split), "--method", "auto", "--out", str(stage / "slider_sheet.png")]),
    ]
    if run is None:
        return from_model
    return [
        ("weights, validation, samples, curve",
         py + ["scripts/build_assets.py", "--run", str(run), "--data", str(data), "--out", str(model), *curve]),
        ("directions", py + ["-m", "app", "directions", "--model", str(model), "--data", str(data), "--split",
                             str(split), "--out", str(model / "directions.safetensors"), "--figures",
                             str(model / "figures"), "--no-progress"]),
        ("edit strip", py + ["scripts/build_assets.py", "--run", str(run), "--data", str(data), "--out", str(model),
                             "--strip-only"]),
        ("bits/dim range", py + ["scripts/bpd_range.py", "--model", str(model), "--data", str(data), "--split",
                                 str(split)]),
        ("training-face bits/dim", py + ["-m", "flow_model", "eval", "--model", str(model), "--data", str(data),
                                         "--split", str(split), "--subset", "train", *TRAINING_FACES]),
        *from_model,
    ]


def finished(stage: Path) -> set[str]:
    """Names of the steps release.log records as finished (exit 0)."""
    log = stage / "release.log"
    return set(re.findall(r"^== (.+): exit 0 after \d+ s$", log.read_text(), re.M)) if log.is_file() else set()


def measure(run: Path | None, data: Path, stage: Path, threads: int, curve: Sequence[str] = (),
            resume: bool = False) -> None:
    """Every step for a run; without one (--recalibrate), the model-only steps on a copy of the shipped model.
    With `resume`, the steps the staging folder's log records as finished are skipped."""
    if run is not None and not (run / "checkpoint.safetensors").is_file():
        raise SystemExit(f"error: {run} holds no checkpoint.safetensors: not a training run")
    if resume and not (stage / "release.log").is_file():
        raise SystemExit(f"error: {stage} holds no release.log: no pass to resume")
    if not resume and (stage / MODEL.name).exists():
        raise SystemExit(f"error: {stage / MODEL.name} exists; pick an empty --stage (or --resume that pass)")
    done_before = finished(stage) if resume else set()
    if not resume:
        stage.mkdir(parents=True, exist_ok=True)
        if run is None:
            shutil.copytree(ROOT / MODEL, stage / MODEL.name)
        for key, page in PAGES.items():  # their hand-written accounts survive the regeneration
            if (ROOT / page.with_suffix(".md")).is_file():
                shutil.copy(ROOT / page.with_suffix(".md"), stage / f"{key}.md")
    with open(stage / "release.log", "a") as log:
        for name, argv in steps(run, data, stage, threads, curve):
            if name in done_before:
                print(f"== {name}: finished before, skipped", flush=True)
                continue
            started = time.perf_counter()
            print(f"== {name}", flush=True)
            log.write(f"== {name}: {' '.join(argv)}\n")
            log.flush()
            done = subprocess.run(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            log.write(f"== {name}: exit {done.returncode} after {time.perf_counter() - started:.0f} s\n")
            if done.returncode:
                raise SystemExit(f"error: step '{name}' failed (exit {done.returncode}); see {stage / 'release.log'}"
                                 " (--resume goes on from it)")
    print(f"staged in {stage}; the numbers are in {stage / 'release.log'}")


def rewrite(text: str, stage: Path) -> str:
    """Staging paths in a page or JSON file -> the paths the files are installed at."""
    for key, page in PAGES.items():
        text = text.replace(str(stage / key), str(page))
    return text.replace(str(stage / MODEL.name), str(MODEL))


def install(stage: Path, keep_curve_as: str | None) -> None:
    model = stage / MODEL.name
    missing = [p for p in [model / "model.safetensors", model / "calibration.json"]
               + [stage / f"{k}{suffix}" for k, suffixes in PAGE_FILES.items() for suffix in suffixes]
               if not p.is_file()]
    if missing:
        raise SystemExit(f"error: {stage} is not a finished release (missing {', '.join(map(str, missing))})")
    target = ROOT / MODEL
    if keep_curve_as:
        shutil.copy(target / "training_curve.png", target / keep_curve_as)
    copies = [(p, target / p.relative_to(model)) for p in model.rglob("*")
              if p.is_file() and p.name not in HAND_WRITTEN]
    copies += [(stage / f"{k}{suffix}", ROOT / f"{page}{suffix}") for k, page in PAGES.items()
               for suffix in PAGE_FILES[k]]
    for source, dest in copies:
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.suffix in (".md", ".json"):
            dest.write_text(rewrite(source.read_text(), stage))
        else:
            shutil.copy(source, dest)
    print(f"installed {len(copies)} files; now update {MODEL / 'MODEL_CARD.md'} and the README from "
          f"{stage / 'release.log'}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="training run to release (measuring pass)")
    p.add_argument("--data", type=Path, default=Path("../shared/data/celeba"))
    p.add_argument("--stage", type=Path, required=True, help="staging folder (new, for the measuring pass)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recalibrate", action="store_true",
                   help="measuring pass on a copy of the shipped model: calibration, leakage floor, slider sheet")
    p.add_argument("--resume", action="store_true", help="with --run or --recalibrate: go on with the interrupted "
                   "pass in --stage, skipping the steps its release.log records as finished")
    p.add_argument("--install", action="store_true", help="copy a finished staging folder into the checkout")
    p.add_argument("--keep-curve-as", help="with --install: keep the current training curve under this name")
    p.add_argument("--curve-from", type=Path, help="with --run: draw the training curve from this metrics.jsonl "
                   "(a zero-step run from a continuation point has no curve: give its source run's)")
    p.add_argument("--curve-until", type=int, help="with --curve-from: up to this step, the continuation point's")
    args = p.parse_args(argv)
    if args.install + args.recalibrate + (args.run is not None) != 1:
        p.error("give one of --run (measure a run into --stage), --recalibrate (measure the shipped model into "
                "--stage) or --install (install --stage)")
    if args.resume and args.install:
        p.error("--resume goes with --run or --recalibrate")
    if (args.curve_from or args.curve_until is not None) and args.run is None:
        p.error("--curve-from and --curve-until go with --run")
    curve = ([f"--curve-from={args.curve_from.resolve()}"] if args.curve_from else []) + (
        [f"--curve-until={args.curve_until}"] if args.curve_until is not None else [])
    if args.install:
        install(args.stage.resolve(), args.keep_curve_as)
    else:
        measure(args.run and args.run.resolve(), args.data.resolve(), args.stage.resolve(), args.threads, curve,
                resume=args.resume)


if __name__ == "__main__":
    main()

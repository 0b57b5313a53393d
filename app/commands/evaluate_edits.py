"""`python -m app evaluate-edits`: measure every slider on held-out faces with the attribute classifier, optionally
calibrate the sliders first (on other held-out faces), and measure sample quality by temperature (a Frechet
distance and the per-sample face-geometry check of app/face_check.py); writes docs/edits.md, its flip-rate figure
and (with --calibrate) the model's calibration.json.

The faces are the model's validation split (never seen by the model, the directions or the classifier), split in
two halves by a seeded permutation: calibration uses the first half, the report the second. Likewise the geometry
check is fitted on faces of the first half and its real-face reference share measured on the second.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ACCOUNT = "## Account"
REFERENCE_FACES = 64  # labelled real faces per slider for the face-geometry reference


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate-edits", help="measure (and calibrate) the sliders with the attribute classifier")
    p.add_argument("--model", default="assets/celeba64", help="pretrained model directory with its directions")
    p.add_argument("--data", required=True, help="CelebA-layout folder holding the validation faces")
    p.add_argument("--split", help="split.json whose 'val' faces are used (default: the model directory's)")
    p.add_argument("--classifier", default="assets/attribute_classifier", help="attribute classifier directory")
    p.add_argument("--faces", type=int, default=48, help="faces the report is measured on (second half)")
    p.add_argument("--calibration-faces", type=int, default=32, help="faces calibration uses (first half)")
    p.add_argument("--calibrate", action="store_true",
                   help="measure a new calibration and write it (default: use the model's calibration.json)")
    p.add_argument("--grid", default="1,1.25,1.5,2,3",
                   help="multipliers of the class-mean gap that --calibrate tries")
    p.add_argument("--keep-probe", type=float,
                   help="class-mean gaps at which --calibrate first measures leakage to choose the held "
                        "attributes (default: the uncalibrated slider's +1); a leak seen later at the calibrated "
                        "scale is held too")
    p.add_argument("--flip-bound-z", type=float,
                   help="--calibrate judges a slider's flip at +1 by the lower end of its one-sided Wilson interval "
                        "at this many standard errors over the calibration faces that started on the other side "
                        "(default 1.645, 95%%; 0: the measured rate)")
    p.add_argument("--calibration-out", help="where --calibrate writes (default: MODEL/calibration.json)")
    p.add_argument("--calibrate-sliders",
                   help="with --calibrate: comma-separated slider labels to calibrate afresh, keeping the model's "
                        "calibration of the others (its rules must agree with this run's; e.g. after the "
                        "directions gained a method)")
    p.add_argument("--sliders", help="comma-separated slider labels to measure (default: every built-in slider)")
    p.add_argument("--no-before", dest="before", action="store_false",
                   help="skip measuring the uncalibrated sliders")
    p.add_argument("--temperatures", default="0.5,0.6,0.7,0.8,0.9,1.0",
                   help="sample temperatures for the Frechet distance and the geometry check ('' to skip)")
    p.add_argument("--samples", type=int, default=128, help="samples per temperature")
    p.add_argument("--no-geometry", dest="geometry", action="store_false",
                   help="skip the face-geometry check (dlib; about 0.03 s per image) of the samples and of the "
                        "edits (calibration then ignores distortion)")
    p.add_argument("--geometry-faces", type=int,
                   help="real faces per validation half the geometry check is fitted on (first half) and checked on "
                        "(second half; the reference share); default: all of each half")
    p.add_argument("--out", default="docs/edits.md")
    p.add_argument("--results", help="raw results JSON (default: beside --out, .json)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    import torch

    from flow_model.data import load_images, open_dataset, select
    from flow_model.fileio import write_text
    from flow_model.glow import reduce_bits

    from ..calibration import CALIBRATION_FILE, FLIP_BOUND_Z, Calibration
    from ..classifier import instrument_fingerprint, load_instrument, load_metrics
    from ..edit_evaluation import (VALUES, Intactness, calibrate, encode_faces, evaluate_sliders, frechet_distance,
                                   plot_flip_rates, recommend_temperature, sample_quality, steer_label,
                                   validation_halves)
    from ..face_check import ColourCheck, FaceGeometryCheck
    from ..service import SLIDERS, EditorService

    for flag, v in (("--faces", args.faces), ("--calibration-faces", args.calibration_faces),
                    ("--samples", args.samples), ("--geometry-faces", args.geometry_faces)):
        if v is not None and v < 2:
            raise ValueError(f"{flag} must be >= 2, got {v}")
    flip_z = FLIP_BOUND_Z if args.flip_bound_z is None else args.flip_bound_z
    if not 0 <= flip_z < 10:
        raise ValueError(f"--flip-bound-z must be a number of standard errors in [0, 10), got {flip_z}")
    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    model_dir = Path(args.model)
    split = Path(args.split) if args.split else model_dir / "split.json"
    try:
        val_names = json.loads(split.read_text())["val"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{split} is not a split file with a 'val' list: {err}") from None
    cal_half, report_half = validation_halves(val_names, args.seed)
    cal_names, report_names = cal_half[:args.calibration_faces], report_half[:args.faces]
    temps = [float(t) for t in args.temperatures.split(",") if t.strip()]
    check_geometry = args.geometry
    geo_fit_names, geo_real_names = ((cal_half[:args.geometry_faces], report_half[:args.geometry_faces])
                                     if check_geometry else ([], []))
    floor_names = cal_half[:args.samples] if temps else []

    service = EditorService.load(model_dir, device=args.device, align=False)
    if service.directions is None:
        raise ValueError(f"{model_dir} has no directions: nothing to evaluate")
    every = [s.label for s in service.sliders + service.more_sliders]
    chosen = [x.strip() for x in args.sliders.split(",") if x.strip()] if args.sliders else every
    unknown = [x for x in chosen if x not in every]
    if unknown:
        raise ValueError(f"unknown slider(s) {unknown}; valid: {every}")
    afresh = [x.strip() for x in args.calibrate_sliders.split(",") if x.strip()] if args.calibrate_sliders else []
    if afresh and (not args.calibrate or [x for x in afresh if x not in every]):
        raise ValueError(f"--calibrate-sliders needs --calibrate and slider labels ({', '.join(every)}), got "
                         f"{args.calibrate_sliders!r}")
    order = lambda specs: [s for s in SLIDERS if s.label in {x.label for x in specs} and s.label in chosen]  # noqa
    shipped = service.calibration
    if afresh and shipped is None:
        raise ValueError(f"--calibrate-sliders keeps the model's calibration of the other sliders, but {model_dir} "
                         "has none: calibrate every slider")
    classifier = load_instrument(args.classifier, device=args.device)
    size = service.image_size
    data = open_dataset(args.data)
    wanted = list(dict.fromkeys(cal_names + report_names + geo_fit_names + geo_real_names + floor_names))
    images, kept = load_images(select(data, wanted), size, workers=1, progress=False)
    index = {n: i for i, n in enumerate(kept.names())}
    pick = lambda names: images[torch.tensor([index[n] for n in names if n in index])]  # noqa: E731
    check, colour, geometry = None, None, None
    if check_geometry:  # first, so a data set the check cannot fit on fails before the long measurements
        # the real faces at the samples' bit depth, so both go through the same 64x64 pipeline
        n_bits = service.model.config.n_bits
        check, colour, clock = FaceGeometryCheck(), ColourCheck(), time.perf_counter()
        fit_faces, real_faces = reduce_bits(pick(geo_fit_names), n_bits), reduce_bits(pick(geo_real_names), n_bits)
        fit = check.fit(fit_faces)
        real_check = check.check(real_faces)
        per_image = (time.perf_counter() - clock) / (len(fit.passed) + len(real_check.passed))
        colour.fit(fit_faces)
        real_colour = colour.check(real_faces)
        colour_info = {"threshold": colour.threshold, "scalp_threshold": colour.scalp_threshold,
                       "scalp_quantile": colour.scalp_quantile, "real": float(real_colour.mean()),
                       "real_both": float((real_colour & real_check.passed).mean())}
        print(f"face geometry fitted on {len(fit.passed)} faces (found in {fit.detection_rate:.0%}); held-out "
              f"real faces pass {real_check.share:.0%} (found in {real_check.detection_rate:.0%}); "
              f"{per_image:.3f} s per image; colour: at most {colour.threshold:.3f} of the pixels vivid and "
              f"{colour.scalp_threshold:.3f} of the scalp blown red, held-out "
              f"real faces pass {colour_info['real']:.0%}, both checks {colour_info['real_both']:.0%}", flush=True)
        geometry = {"quantile": check.quantile, "threshold": check.threshold, "min_confidence": check.min_confidence,
                    "fit": fit.summary(), "real": real_check.summary(), "seconds_per_image": per_image,
                    "colour": colour_info}
        by_slider = _attribute_faces(data, set(val_names), [s for s in SLIDERS if s.label in chosen], args.seed)
        if by_slider:
            names = sorted({n for v in by_slider.values() for n in v})
            refs, refs_kept = load_images(select(data, names), size, workers=1, progress=False)
            at = {n: i for i, n in enumerate(refs_kept.names())}
            geometry["attributes"] = {}
            for label, v in by_slider.items():
                carriers = reduce_bits(refs[torch.tensor([at[n] for n in v if n in at])], n_bits)
                result = check.check(carriers)
                geometry["attributes"][label] = {**result.summary(),
                                                 "both": float((result.passed & colour.check(carriers)).mean())}
            print("real faces carrying each slider's attribute pass the geometry check (and both checks): " + ", ".join(
                f"{k} {v['share']:.0%} ({v['both']:.0%})" for k, v in geometry["attributes"].items()), flush=True)
    cal_faces = encode_faces(service, classifier, pick(cal_names))
    faces = encode_faces(service, classifier, pick(report_names))
    print(f"{len(cal_faces.latents)} calibration faces, {len(faces.latents)} report faces "
          f"({time.perf_counter() - started:.0f} s)", flush=True)
    intact = Intactness.of(check, faces, colour) if check is not None else None

    def show(label, rows):
        r = next(r for r in rows if r["value"] == rows[-1]["value"])
        print(f"  {label:20s} flip {r['flip']:.0%} moved {r['moved']:.0%} leak " +
              " ".join(f"{a} {v:.3f}" for a, v in r["leakage"].items()) +
              f" back-off {r['backoff']:.0%}" + (f" intact {r['intact']:.0%}" if "intact" in r else "")
              + f" ({time.perf_counter() - started:.0f} s)", flush=True)

    before = None
    if args.before:
        service.set_calibration(None)
        print("uncalibrated sliders (classifier normal, SliderSpec scales, nothing held), at -1 and +1:")
        before = evaluate_sliders(service, classifier, faces, [service.slider(s.label) for s in order(service.sliders)],
                                  (-1.0, 1.0),
                                  method="classifier", progress=show, intact=intact)
    if args.calibrate:
        service.set_calibration(None)
        print(f"calibrating on {len(cal_faces.latents)} faces:", flush=True)
        grid = tuple(float(g) for g in args.grid.split(",") if g.strip())
        if not grid or min(grid) <= 0 or list(grid) != sorted(grid):
            raise ValueError(f"--grid must be increasing positive numbers, got {args.grid!r}")
        if afresh:  # the rules known before the long measurements: refuse a mismatch now, not after them
            shipped.updated(Calibration({}, {"grid": list(grid), "faces": len(cal_faces.latents),
                                             "flip_bound_z": flip_z, "keep_probe": args.keep_probe}), [])
        calibration = calibrate(service, classifier, cal_faces, afresh or chosen, grid, keep_probe=args.keep_probe,
                                geometry=check, colour=colour, flip_z=flip_z,
                                progress=lambda label, c: print(
            f"  {label:20s} {c.method} x{c.scale:g} keep {c.keep} steer {steer_label(c.steer)} local {c.local} "
            f"default {c.default} flip {c.flip_at_1:.0%} ({time.perf_counter() - started:.0f} s)", flush=True))
        calibration.info.update(faces_from=f"validation split {split}, first half of a seed-{args.seed} "
                                f"permutation", classifier=str(args.classifier),
                                classifier_fingerprint=instrument_fingerprint(args.classifier))
        if afresh:
            calibration = shipped.updated(calibration, afresh)
        out_calibration = Path(args.calibration_out) if args.calibration_out else model_dir / CALIBRATION_FILE
        calibration.save(out_calibration)
        print(f"wrote {out_calibration}")
    else:
        calibration = shipped
    service.set_calibration(calibration)
    specs = [service.slider(s.label) for s in order(service.sliders + service.more_sliders)]
    print("calibrated defaults, at " + ", ".join(f"{v:+g}" for v in VALUES) + ":")
    after = evaluate_sliders(service, classifier, faces, specs, VALUES, progress=show, intact=intact)

    quality, floor, recommended = {}, None, (None, "")
    if temps:
        real = faces.features
        # the floor at the samples' own sizes: as many real faces of the first half as samples (when it has them)
        # against the same report faces, so that it bounds what the samples' distances can reach
        floor = frechet_distance(classifier.predict(reduce_bits(pick(floor_names), service.model.config.n_bits))[1],
                                 real)
        quality = sample_quality(service, classifier, real, temps, args.samples, args.seed, geometry=check)
        print("Frechet distance to real faces: " + ", ".join(f"T={t:g} {q.frechet:.2f}" for t, q in quality.items())
              + f"; real vs real {floor:.2f}")
        if geometry is not None:
            geometry["samples"] = {t: q.geometry.summary() for t, q in quality.items()}
            print("undistorted (face geometry): " + ", ".join(f"T={t:g} {q.geometry.share:.0%}"
                                                               for t, q in quality.items()))
        recommended = recommend_temperature(
            {t: q.frechet for t, q in quality.items()},
            {t: q.geometry.share for t, q in quality.items()} if geometry is not None else None)
        print(f"recommended temperature: {recommended[0]} ({recommended[1]})")
        if args.calibrate and recommended[0] is not None:  # the calibration run also sets the sampling default
            calibration.temperature = recommended[0]
            calibration.info["temperature"] = recommended[1]
            calibration.save(out_calibration)
            print(f"wrote the recommended temperature into {out_calibration}")

    out = Path(args.out)
    figure = out.with_name(out.stem + "_flip.png")
    plot_flip_rates(after, before, figure)
    results = Path(args.results) if args.results else out.with_suffix(".json")
    write_text(results, json.dumps({"before": before, "after": after,
                                    "frechet": {t: q.frechet for t, q in quality.items()}, "frechet_floor": floor,
                                    "recommended_temperature": recommended[0],
                                    "geometry": geometry,
                                    "calibration": str(args.calibration_out or model_dir / CALIBRATION_FILE)
                                    if calibration is not None else None}, indent=1, default=float) + "\n")
    metrics = load_metrics(args.classifier).get("validation", {})
    write_text(out, _report(args, service, classifier, metrics, faces, cal_faces, before, after, quality,
                            (floor, len(floor_names)), geometry, recommended, figure, calibration, out,
                            time.perf_counter() - started))
    print(f"wrote {out}, {figure}, {results} ({time.perf_counter() - started:.0f} s)")
    return 0


def _attribute_faces(data, exclude: set[str], specs, seed: int) -> dict[str, list[str]]:
    """Per slider, up to REFERENCE_FACES labelled real faces outside `exclude` on the side the slider moves to (with
    glasses; old for Age), drawn with a seeded generator: how often real faces that carry the attribute pass the
    face-geometry check is what an edit to it may cost. Empty without labels."""
    import numpy as np

    if data.labels is None:
        return {}
    names = data.names()
    out = {}
    for spec in specs:
        if spec.attribute not in data.attributes:
            continue
        column = data.labels[:, data.attributes.index(spec.attribute)]
        pool = [n for n, v in zip(names, column) if v == (1 if spec.sign > 0 else -1) and n not in exclude]
        if pool:
            rng = np.random.default_rng(seed)
            out[spec.label] = [pool[i] for i in sorted(rng.choice(len(pool), min(REFERENCE_FACES, len(pool)),
                                                                   replace=False))]
    return out


def _report(args, service, classifier, metrics, faces, cal_faces, before, after, quality, floor, geometry, recommended,
            figure, calibration, out, seconds) -> str:
    """The markdown page; `floor` is (real-vs-real Frechet distance, real faces it used)."""
    import numpy as np

    from ..calibration import CALIBRATION_FILE
    from ..classifier import ClassifierEnsemble, instrument_fingerprint
    from ..directions import WITHIN_GENDER
    from ..edit_evaluation import (before_after_table, flip_table, held_by, percent, slider_table, steer_label,
                                   targets_summary)
    from ..face_check import BLOWN_RED, BLOWN_RED_OVER_GREEN, VIVID_BRIGHTNESS, VIVID_SATURATION

    floor, floor_faces = floor

    account = ""
    if out.is_file():
        text = out.read_text()
        if ACCOUNT in text:
            account = text[text.index(ACCOUNT):].rstrip() + "\n"
    accs = ", ".join(f"{a} {metrics[a]['accuracy']:.1%}" for a in ("Male", "Young", "Smiling", "Eyeglasses")
                     if a in metrics)
    mean_acc = np.mean([m["accuracy"] for m in metrics.values()]) if metrics else float("nan")
    intact = ("; face intact (the face-geometry check of the samples' section) = of the faces whose reconstruction\n"
              "passes the check, the share whose edit still passes") if geometry else ""
    instrument = (f"the mean reading of {len(classifier.members)} small CNNs, each trained from its own seed"
                  if isinstance(classifier, ClassifierEnsemble) else "a small CNN trained")
    parts = [f"""# What the sliders do, measured

Written by `python -m app evaluate-edits --model {args.model} --data DATA --faces {args.faces} \\
--calibration-faces {args.calibration_faces}{f' --calibrate --grid {args.grid}' if args.calibrate else ''}\
{f' --keep-probe {args.keep_probe:g}' if args.calibrate and args.keep_probe else ''}\
{f' --flip-bound-z {args.flip_bound_z:g}' if args.calibrate and args.flip_bound_z is not None else ''}\
{f' --calibrate-sliders "{args.calibrate_sliders}"' if args.calibrate and args.calibrate_sliders else ''}\
{'' if args.before else ' --no-before'} --samples {args.samples}{'' if args.geometry else ' --no-geometry'}\
{f' --geometry-faces {args.geometry_faces}' if args.geometry_faces else ''} --threads {args.threads}` \
({seconds / 60:.0f} minutes, {args.threads} CPU thread{'s' if args.threads > 1 else ''}). Raw numbers: [{out.with_suffix('.json').name}]({out.with_suffix('.json').name}).

**Instrument.** The attribute classifier in `{args.classifier}` (its CARD.md): {instrument} on the model's
training faces only, a different model from the latent-space directions. Held-out accuracy on the 726 validation
faces: mean over the 40 attributes {mean_acc:.1%}; {accs}.

**Faces.** The model's validation split (`split.json`, 726 faces the model, the directions and the classifier never
trained on), split in two halves by a seed-{args.seed} permutation: calibration used {len(cal_faces.latents)} faces of
the first half, everything below is measured on {len(faces.latents)} faces of the second half. Each face is encoded
exactly; the "before" reading is of its reconstruction (5-bit), the "after" reading of the edit as
`EditorService.edit` shows it (the same checked decode and back-off, and for a slider calibrated to keep its edits
to its part of the face, the same region), with the service's defaults.

**Measures** (per slider and value; the intended direction is the slider's sign times the value's):
shift = mean change of P(attribute) the intended way; moved = share of faces whose P moved the intended way;
flip = among the faces that started on the other side of 0.5, the share that crossed (n = that count); leakage =
mean |dP| of Male, Young, Smiling (and the largest over all other 39 attributes); pixel change = mean |edit -
reconstruction| in 0-255 units; back-off = share of faces whose edit had to be shown at reduced strength{intact}.
""",
             "## Calibrated defaults at +1\n\n" + slider_table(after, service, 1.0),
             "## Calibrated defaults at -1\n\n" + slider_table(after, service, -1.0),
             "## Flip rate and moved-the-intended-way by slider value (calibrated defaults)\n\n"
             f"![flip rate against slider value]({figure.name})\n\n" + flip_table(after)]
    if before:
        parts.append("## Before and after calibration\n\nBefore: the built-in `SliderSpec` scales, classifier "
                     "normal, nothing held fixed (the editor's previous defaults), on the same faces.\n\n"
                     + before_after_table(before, after))
    parts.append("## Targets (issue 15) for the default sliders at +1\n\n" + targets_summary(after, service))
    if geometry and geometry.get("attributes"):
        real, colour_info = geometry["real"], geometry["colour"]
        rows = ["| slider | face intact at +1 (edits) | at -1 | real faces with the attribute pass (n) |",
                "|---|---|---|---|"]
        for label, ref in geometry["attributes"].items():
            edit = {r["value"]: r for r in after.get(label, [])}
            rows.append(f"| {label} | {percent(edit.get(1.0, {}).get('intact'))} | "
                        f"{percent(edit.get(-1.0, {}).get('intact'))} | {ref['both']:.0%} ({ref['n']}) |")
        parts.append(
            "## Faces kept intact\n\nFace intact = of the report faces whose reconstruction passes both face checks, "
            "the share whose edit still passes them: the face-geometry check (described under sample quality) and a "
            "colour check for blow-outs the landmarks cannot see (a red scalp, a blue smear): at most "
            f"{colour_info['threshold']:.3f} of the pixels vivid (saturation >= {VIVID_SATURATION:g} at brightness "
            f">= {VIVID_BRIGHTNESS:g}), which {geometry['quantile']:.0%} of real faces meet, and at most "
            f"{colour_info['scalp_threshold']:.3f} of the scalp (the top of the framing, above the brows) bright red "
            f"or pink (R >= {BLOWN_RED:g} and R - G >= {BLOWN_RED_OVER_GREEN:g}), which "
            f"{colour_info['scalp_quantile']:.0%} of real faces meet (red backgrounds and red hair give them a long "
            "tail there). Beside it, how often "
            "real faces that carry the slider's attribute pass both (labelled faces outside the validation split, "
            "on the side the slider moves to; all real faces of the second held-out half pass the geometry check "
            f"{real['share']:.0%}, the colour check {colour_info['real']:.0%}, both {colour_info['real_both']:.0%}): "
            "where the attribute itself hides landmarks (glasses, bangs, a beard) real faces pass somewhat less, "
            "so an edit that keeps far fewer faces intact than that distorts them."
            + (f" Calibration counts a strength only if at least {calibration.info['min_intact']:.0%} of the "
               "calibration faces stay intact there, on each side." if calibration is not None
               and calibration.info.get("min_intact") else "") + "\n\n" + "\n".join(rows))
    if calibration is not None:
        rows = ["| slider | method | scale | kept fixed | counter-steer | edits | default | flip on calibration faces "
                "| why |", "|---|---|---|---|---|---|---|---|---|"]
        for label, c in calibration.sliders.items():
            minus = f"; negative side {c.minus_scale:g}" if c.minus_scale is not None else ""
            within = (f", within gender {c.scales[WITHIN_GENDER]:g}" if WITHIN_GENDER in c.scales else "")
            rows.append(f"| {label} | {c.method} | {c.scale:g} (classifier {c.scales.get('classifier', 0):g}, "
                        f"mean diff {c.scales.get('mean_diff', 0):g}{within}{minus}) | {', '.join(c.keep) or '-'}"
                        f"{_held_by(held_by(service.slider(label)))} | {steer_label(c.steer)} | "
                        f"{service.slider(label).region if c.local else 'whole face'} | "
                        f"{'yes' if c.default else 'no'} | {c.flip_at_1:.0%} | {c.reason} |")
        z, moved = calibration.info.get("leak_bound_z"), calibration.info.get("min_moved")
        probes, flip_z = calibration.info.get("probes"), calibration.info.get("flip_bound_z")
        judged = (f" (here and below judged by the upper end of its one-sided 95% interval: mean |dP| + {z:g} "
                  "standard errors over the calibration faces, since the report faces are others)" if z else "")
        recorded = calibration.info.get("classifier_fingerprint")
        other = ("" if recorded == instrument_fingerprint(args.classifier) else
                 "**Measured with another instrument than the figures above** (the classifier "
                 + (f"whose weights hash to {recorded}" if recorded else "that calibrated it, which "
                    "calibration.json does not identify") + f", not the one now in `{args.classifier}`): the "
                 "scales, holds and flip figures below are that instrument's judgement. ")
        parts.append("## The calibration (`calibration.json`)\n\n" + other + "Measured on the calibration half only. "
                     "Per slider: "
                     f"the leak attributes (Male, Young, Smiling) whose mean |dP| exceeds 0.05{judged} when the "
                     "classifier "
                     "normal moves " + (f"{args.keep_probe:g} class-mean gaps" if args.keep_probe else
                                         "as far as the uncalibrated slider's +1") + " are held fixed; then "
                     "for each method the direction (orthogonal to them) is measured at "
                     f"{', '.join(f'{g:g}' for g in calibration.info.get('grid', []))} class-mean gaps, and the "
                     f"scale is {_reaching(flip_z)} among strengths that still decode (back-off on at most 10% of "
                     "faces"
                     + (f", and at least {calibration.info['min_intact']:.0%} of the faces kept intact by the face "
                        "checks, searched upwards and stopped at the first strength that breaks more; where that "
                        "strength" + (" (or one that needs the back-off on more than 10% of faces)"
                                      if calibration.info.get("probes_past_backoff") else "")
                        + f" already flips 60%, {_probed_between(probes)}; where taking "
                        "the attribute away at that scale breaks more faces, the negative side gets its own smaller "
                        "scale, searched the same way"
                        if calibration.info.get("min_intact") else "") + "); "
                     + _pair_rule(z, moved, probes, flip_z, calibration.info.get("pairs_by_shortfall", False),
                                  calibration.info.get("leakage_by_worse_group"))
                     + ". The chosen edit is measured again at its "
                     "scale: a leak attribute above 0.05 there is held as well and the slider recalibrated, until "
                     "none is left to hold. The held attributes' directions may come from either method or, where "
                     "the directions file has them, be the held attributes' whole linear nullspaces (INLP bases "
                     "whose first row is the classifier normal): every pair of the slider's method and a way of "
                     "holding is measured (\"by ... directions\" in the table marks a slider held by the other "
                     "method's, \"by nullspace\" one held by the nullspaces). For a slider whose attribute lives in "
                     "one part of the face (the eyes for Eyeglasses and Narrow eyes, the mouth for Mouth slightly "
                     "open, the lower face for Smiling and Beard, the forehead for Bangs; `app/regions.py`), the "
                     "chosen pair's scale is searched again with every edit kept to that region (the edited decode "
                     "inside, the reconstruction outside, over a soft edge), and the local edit is kept where it "
                     "misses the same targets less (\"edits\" in the table)."
                     + _within_gender_rule(calibration.info)
                     + (" Once nothing more is held, where the chosen edit still leaks into an attribute of the "
                        "issue's lines (Male, Young for Smiling) by more than 0.05 and its mean signed change of that "
                        "attribute (the drift: held orthogonal to a linear read-out, an edit can still move the "
                        "instrument's reading one way on average) is more than "
                        f"{calibration.info.get('leak_bound_z', 0):g} standard errors from 0, the drift is measured "
                        "again with k class-mean gaps of the attribute's classifier normal added per gap of the "
                        f"slider, k = {calibration.info['steer_step']:g} against it; the k where the line through the "
                        "two crosses 0 (at most "
                        f"{calibration.info['steer_max']:g} either way) is searched for its scale like the pair, and "
                        "kept where it misses the targets less (\"counter-steer\" in the table)."
                        if calibration.info.get("steer_step") else "")
                     + " A slider that cannot reach 30% at any "
                     "decodable strength leaves the default set (it stays under \"More attributes\")."
                     + _recalibrated(calibration.info) + "\n\n"
                     + "\n".join(rows))
    if quality:
        best = min(quality, key=lambda t: quality[t].frechet)
        head = "| temperature | Frechet distance |" + (" undistorted (face geometry) |" if geometry else "")
        rows = [head, "|---|---|" + ("---|" if geometry else "")]
        for t, q in quality.items():
            row = f"| {t:g} | {q.frechet:.2f}{' (lowest)' if t == best else ''} |"
            if q.geometry is not None:
                low, high = q.geometry.interval()
                row += f" {q.geometry.share:.0%} ({low:.0%}-{high:.0%}) |"
            rows.append(row)
        text = ("## Sample quality by temperature\n\nFrechet distance between Gaussians fitted to the "
                f"classifier's {classifier.config.feature_dim}-dimensional penultimate features of "
                f"{args.samples} model samples per temperature and of the {len(faces.latents)} held-out faces "
                f"(5-bit reconstructions). The same distance from {floor_faces} real faces of the "
                f"first held-out half to the same {len(faces.latents)} faces is **{floor:.2f}**: the floor at these "
                "sample sizes (with few faces in many dimensions the distance is far from 0 even between real "
                "faces). Lower is closer to real faces.")
        if geometry:
            fit, real = geometry["fit"], geometry["real"]
            text += (
                "\n\n**Undistorted (face geometry)**, per sample and from the same samples (`app/face_check.py`): "
                "the image, upsampled to 256 px, must hold a face that dlib's HOG detector finds at least as "
                f"confidently as {geometry['quantile']:.0%} of real faces, whose 68 landmarks, after the best "
                "similarity transform onto the real faces' Procrustes mean shape, lie no farther from it (RMS, in "
                f"inter-ocular distances; threshold {geometry['threshold']:.3f}) than for {geometry['quantile']:.0%} "
                f"of real faces. Fitted on {fit['n']} faces of the first held-out half. In brackets the 95% Wilson "
                "interval. dlib's landmarks stay face-shaped on smeared faces, so the check catches gross "
                "distortion (no face found, a weak detection, a deformed shape) and misses smeared texture: read "
                "the share as an upper bound on the share of clean samples.\n\n"
                f"Reference: {real['n']} real faces of the second held-out half, in the same 64x64 5-bit pipeline "
                f"as the samples, pass **{real['share']:.0%}** ({real['low']:.0%}-{real['high']:.0%}); a face is "
                f"detected in {real['detection_rate']:.0%} of them.")
        temperature, why = recommended
        text += (f"\n\n**Recommended temperature: {temperature:g}**, {why}"
                 + (f"; `--calibrate` writes it into {CALIBRATION_FILE}, and the editor's Sample tab starts there."
                    if args.calibrate else ".")
                 if temperature is not None else f"\n\n**No recommended temperature:** {why}.")
        parts.append(text + "\n\n" + "\n".join(rows))
    text = "\n\n".join(parts) + "\n"
    if account:
        text += "\n" + account
    return text


def _within_gender_rule(info: dict) -> str:
    """The calibration page's sentence on the within-gender method, where the calibration tried it."""
    from ..directions import WITHIN_GENDER

    tried = info.get("methods") or (info.get("recalibrated") or {}).get("methods") or []
    if WITHIN_GENDER not in tried:
        return ""
    return (" Where the directions carry them, the methods include the class-mean differences within each gender "
            "(`within_gender`, for every attribute but Male): each face is edited by the mix of the men's and the "
            "women's difference that the latent's own reading of its gender gives, and its held attributes are held "
            "by one of the face-independent ways, the same for every face.")


def _recalibrated(info: dict) -> str:
    """The calibration page's sentence on which sliders the last run calibrated afresh, where it did not do all."""
    again = info.get("recalibrated")
    if not again:
        return ""
    from ..directions import METHODS

    before = info.get("methods") or METHODS  # unrecorded before the within-gender method, the only one added since
    new = [m for m in again["methods"] or [] if m not in before]
    return (f" The last run calibrated {', '.join(again['sliders'])} afresh (`--calibrate-sliders`); the other "
            "sliders keep the calibration made before it, by the same rules"
            + (f", which did not try {', '.join(new)}." if new else "."))


def _held_by(hold: str | None) -> str:
    """How a calibrated slider holds its kept attributes, when not by its own method's directions."""
    from ..directions import NULLSPACE

    return "" if hold is None else " (by nullspace)" if hold == NULLSPACE else f" (by {hold} directions)"


def _probed_between(probes: int | None) -> str:
    """How a calibration with `probes` (None: before the search between grid points) measured between a strength
    that kept faces and the next, which flipped 60% but broke them, as the docs' rule says it."""
    if not probes:
        return ("the strength where the line from the last good one reaches 60% is measured too and counts like a "
                "grid point")
    return (f"up to {probes} strengths between it and the last good one are measured too (each where the line "
            "between the nearest measured strengths on either side reaches 60%, or halfway once the upper one no "
            "longer does), and those that keep faces intact count like grid points")


def _reaching(flip_z: float | None) -> str:
    """How a calibration recorded with `flip_z` (None: before it was recorded) judged a scale to reach the target
    flip, as the docs' rule says it."""
    if not flip_z:
        return "the smallest reaching 60% flip at +1 (linear between grid points)"
    return ("the smallest whose flip at +1, judged by the lower end of its one-sided 95% Wilson interval "
            f"(z = {flip_z:g}) over the calibration faces that started on the other side, reaches 60% (linear "
            "between grid points; a rate that only just reaches 60% on these faces falls short of it on about half "
            "of all other face sets, the report's among them)")


def _pair_rule(z: float | None, moved: float | None, probes: int | None, flip_z: float | None = None,
               by_shortfall: bool = False, worse_group: int | None = None) -> str:
    """How a calibration recorded with these settings (None or False: before each was added) chose a slider's method
    and way of holding, as the docs' rule says it."""
    flip = "its flip, so judged," if flip_z else "its flip"
    pairs = "of the pairs of method and way of holding (below) that reach it"
    lines = "into the issue's lines, Male for a non-gender slider and Young for Smiling"
    if worse_group:
        lines += (", judged in whichever of the two groups of faces on either side of 0.5 of that attribute before "
                  f"the edit (for Male: the faces read as men, and as women) it leaks more in, a group counting "
                  f"from {worse_group} faces, so a slider that reads the fewer group as the other cannot hide "
                  "behind the faces it leaves alone")
    share = (f"its share of faces moved the intended way under {moved:.0%}, judged by the lower end of its one-sided "
             "95% interval" if moved else "")
    kept = "then the one with the smallest largest leakage into Male, Young and Smiling, is kept"
    summed = (f"the one that misses the issue's targets least ({flip} under 60%, plus its leakage over 0.05 {lines}, "
              f"plus {share}, all summed")
    if by_shortfall:
        return ("of the pairs of method and way of holding (below) that stay in the default set, " + summed
                + ", whether or not it reaches 60%: a pair a little short of the flip can win over one that reaches it "
                "by dragging another attribute along), " + kept)
    if probes:
        return f"{pairs} (if none does, of those that stay in the default set), {summed}), " + kept
    if moved:
        return (f"{pairs}, the one that misses the issue's other targets least (its leakage over 0.05 {lines}, plus "
                f"{share}, summed), {kept} (else the one that flips more)")
    if z:
        return (f"{pairs}, the one whose leakage goes least over 0.05 into the issue's lines (Male for a non-gender "
                f"slider, Young for Smiling), {kept} (else the one that flips more)")
    return "the method is the one that reaches it with less leakage (else the one that flips more)"

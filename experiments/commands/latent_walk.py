"""`python -m experiments latent-walk --out experiments/latent_walk.md`: does an MLP probe of the latent, holding the
other attributes non-linearly, leak less than the shipped linear edits at equal flip?"""
from __future__ import annotations

import argparse
from pathlib import Path

from flow_model.commands import positive_int

from . import add_slider_study_inputs


def add_parser(sub) -> None:
    p = sub.add_parser("latent-walk", help="linear edits against a probe-held edit and a probe walk, at equal flip")
    add_slider_study_inputs(p)
    p.add_argument("--faces", type=positive_int, default=256, help="report faces (evaluate-edits' second half)")
    p.add_argument("--probe-faces", type=positive_int, default=8000, help="training faces the probe is fitted on")
    p.add_argument("--sliders", help="comma-separated slider labels (default: SLIDERS in experiments/latent_walk.py, "
                                      "those over a leakage line on release 15)")
    p.add_argument("--strengths", help="comma-separated multiples of each slider's calibrated +1, 1 among them "
                                       "(default: STRENGTHS in experiments/latent_walk.py)")
    p.add_argument("--steps", type=positive_int, default=8, help="steps of the probe walk")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--out", type=Path, required=True, help="markdown report; raw JSON and plot beside it")


def parse_sliders_and_strengths(args: argparse.Namespace, sliders: tuple[str, ...],
                                strengths: tuple[float, ...]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """--sliders and --strengths, or the given defaults; strengths in (0, 10] with 1, the shipped +1, among them."""
    if args.sliders is not None:
        sliders = tuple(s.strip() for s in args.sliders.split(",") if s.strip())
    try:
        if args.strengths is not None:
            strengths = tuple(float(s) for s in args.strengths.split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--strengths must be comma-separated numbers, got {args.strengths!r}") from None
    if not sliders or not strengths or any(not 0 < s <= 10 for s in strengths):
        raise ValueError(f"need at least one slider and strengths in (0, 10], got {args.sliders!r} and "
                         f"{args.strengths!r}")
    if 1.0 not in strengths:
        raise ValueError(f"--strengths must include 1 (the shipped +1 the comparison is made at), got {strengths}")
    return sliders, strengths


def run(args: argparse.Namespace) -> int:
    import torch

    from ..latent_walk import SLIDERS, STRENGTHS, measure, write_report

    sliders, strengths = parse_sliders_and_strengths(args, SLIDERS, STRENGTHS)
    torch.set_num_threads(args.threads)
    results = measure(args.model, args.classifier, args.data, args.faces, args.probe_faces, list(sliders), strengths,
                      args.steps)
    write_report(results, args.out)
    print(f"wrote {args.out} ({results['minutes']:.0f} min)")
    return 0

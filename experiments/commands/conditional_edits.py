"""`python -m experiments conditional-edits --out experiments/conditional_edits.md`: do edits fitted within each
gender leak less into Male than the shipped linear edits at equal flip?"""
from __future__ import annotations

import argparse
from pathlib import Path

from flow_model.commands import positive_int

from . import add_slider_study_inputs


def add_parser(sub) -> None:
    p = sub.add_parser("conditional-edits", help="the shipped edits against class-mean differences taken within each "
                                                 "gender, at equal flip")
    add_slider_study_inputs(p)
    p.add_argument("--faces", type=positive_int, default=128,
                   help="validation faces of the first half past calibration's 96")
    p.add_argument("--sliders", help="comma-separated slider labels (default: SLIDERS in "
                                      "experiments/conditional_edits.py, those missing a target on release 16)")
    p.add_argument("--strengths", help="comma-separated multiples of each slider's calibrated +1, 1 among them "
                                       "(default: STRENGTHS in experiments/conditional_edits.py)")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--out", type=Path, required=True, help="markdown report; raw JSON and plot beside it")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..conditional_edits import SLIDERS, STRENGTHS, measure, write_report
    from .latent_walk import parse_sliders_and_strengths

    sliders, strengths = parse_sliders_and_strengths(args, SLIDERS, STRENGTHS)
    torch.set_num_threads(args.threads)
    results = measure(args.model, args.classifier, args.data, args.faces, list(sliders), strengths)
    write_report(results, args.out)
    print(f"wrote {args.out} ({results['minutes']:.0f} min)")
    return 0

"""`python -m experiments leakage-floor --out experiments/leakage_floor.md`: how much of each slider's measured
leakage is the edit, the classifier's jitter, or the classifier's own confound."""
from __future__ import annotations

import argparse
from pathlib import Path

from flow_model.commands import positive_int

from . import add_slider_study_inputs


def add_parser(sub) -> None:
    p = sub.add_parser("leakage-floor", help="leakage of the default sliders against null edits and the "
                                             "instrument's confound")
    add_slider_study_inputs(p)
    p.add_argument("--faces", type=positive_int, default=64, help="report faces (evaluate-edits' second half)")
    p.add_argument("--boot", type=positive_int, default=1000, help="bootstrap resamples for the confound's interval")
    p.add_argument("--nullspace-rounds", type=int, default=4,
                   help="INLP rounds for Male past the editor's own normal, where the directions file has no basis "
                   "for Male (0: skip that part)")
    p.add_argument("--nullspace-faces", type=positive_int, default=4000,
                   help="training faces the INLP fits are made on, where the directions file has no basis")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--out", type=Path, required=True, help="markdown report; raw JSON beside it")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..leakage_floor import measure, write_report

    if args.nullspace_rounds < 0:
        raise ValueError(f"--nullspace-rounds must be >= 0, got {args.nullspace_rounds}")
    torch.set_num_threads(args.threads)
    results = measure(args.model, args.classifier, args.data, args.faces, args.boot,
                      nullspace_rounds=args.nullspace_rounds, nullspace_faces=args.nullspace_faces)
    write_report(results, args.out)
    print(f"wrote {args.out} ({results['minutes']:.0f} min)")
    return 0

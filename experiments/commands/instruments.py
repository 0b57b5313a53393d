"""`python -m experiments instruments --group plain=DIR,DIR --group balanced=DIR,DIR --out PAGE.md`: the same edits
scored by several attribute classifiers, to see which slider verdicts the instrument decides."""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from flow_model.commands import positive_int

from . import add_slider_study_inputs


def group(text: str) -> tuple[str, list[Path]]:
    name, sep, dirs = text.partition("=")
    paths = [Path(d) for d in dirs.split(",") if d.strip()]
    if not sep or not name.strip() or not paths:
        raise argparse.ArgumentTypeError(f"a group is NAME=DIR[,DIR...], got {text!r}")
    return name.strip(), paths


def add_parser(sub) -> None:
    p = sub.add_parser("instruments", help="the default sliders' +1 edits scored by groups of attribute "
                                           "classifiers: which verdicts the instrument decides")
    add_slider_study_inputs(p)
    p.add_argument("--group", type=group, action="append", required=True,
                   help="NAME=DIR[,DIR...]: classifiers scored apart and as an ensemble (repeat for more groups)")
    p.add_argument("--faces", type=positive_int, default=256, help="report faces (evaluate-edits' second half)")
    p.add_argument("--threads", type=positive_int, default=1)
    p.add_argument("--out", type=Path, required=True, help="markdown report; raw JSON beside it")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..instruments import measure, write_report

    groups = dict(args.group)
    if len(groups) != len(args.group):
        raise ValueError(f"group names must differ, got {[g for g, _ in args.group]}")
    torch.set_num_threads(args.threads)
    results = measure(args.model, groups, args.data, args.faces)
    command = "python -m experiments " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    write_report(results, args.out, command)
    print(f"wrote {args.out} ({results['minutes']:.0f} min)")
    return 0

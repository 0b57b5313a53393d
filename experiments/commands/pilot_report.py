"""`python -m experiments pilot-report RUN_DIR... --out experiments/pilots.md`: rank pilot runs in one markdown page."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("pilot-report", help="compare pilot runs: a ranked table, the curves and the samples")
    p.add_argument("runs", nargs="+", type=Path, help="run directories of the pilots")
    p.add_argument("--out", type=Path, required=True, help="markdown report; its figures go next to it")
    p.add_argument("--per-row", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", type=Path, help="the runs' dataset: adds each run's paired difference from the best over "
                                             "their shared validation faces")


def run(args: argparse.Namespace) -> int:
    from ..pilots import write_report

    for r in write_report(args.runs, args.out, args.per_row, args.seed, args.data):
        print(f"{r['name']:<24} {r['val_bpd']:.4f} ± {r['val_bpd_se']:.4f} bits/dim  {r['steps']} steps  "
              f"{r['img_per_s']:.1f} img/s")
    print(f"wrote {args.out}")
    return 0

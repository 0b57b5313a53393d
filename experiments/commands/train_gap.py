"""`python -m experiments train-gap --out experiments/train_gap.md`: the train/held-out gap between like faces."""
from __future__ import annotations

import argparse
from pathlib import Path

from flow_model.commands import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("train-gap", help="bits/dim of the validation faces against samples of training faces, "
                                         "by the stored size of their files")
    p.add_argument("--model", type=Path, default=Path("assets/celeba64"))
    p.add_argument("--data", type=Path, default=Path("../shared/data/celeba"))
    p.add_argument("--split", type=Path, help="the split.json naming the validation and training faces (default: "
                   "the model's own)")
    p.add_argument("--faces", type=positive_int, default=2000, help="training faces drawn at random per folder")
    p.add_argument("--first", type=positive_int, default=1300,
                   help="the first N files of the validation faces' folder (the figure releases 3-16 reported)")
    p.add_argument("--seed", type=int, default=0, help="the draw of the samples and the dequantisation noise")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--out", type=Path, required=True, help="markdown report; raw JSON beside it")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..train_gap import measure, write_report

    split = args.split or args.model / "split.json"
    if not split.is_file():
        raise FileNotFoundError(f"no split file {split}: pass --split, or a --model that has one")
    torch.set_num_threads(args.threads)
    results = measure(args.model, args.data, split, args.faces, args.first, args.seed)
    write_report(results, args.out, f"python -m experiments train-gap --model {args.model} --out {args.out}")
    print(f"wrote {args.out}")
    return 0

"""`python -m flow_model sample`: a grid PNG of samples at one temperature."""
from __future__ import annotations

import argparse

import torch

from . import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("sample", help="a grid PNG of samples at one temperature")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=positive_int, default=16)
    p.add_argument("--columns", type=positive_int)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from ..training.checkpoint import load_model
    from ..visualize import image_grid

    model = load_model(args.model, args.device)
    with torch.no_grad():
        images = model.sample(args.n, args.temperature, generator=torch.Generator().manual_seed(args.seed))
    image_grid(images, args.columns or min(args.n, 8)).save(args.out)
    print(f"wrote {args.n} samples at temperature {args.temperature} (seed {args.seed}) to {args.out}")
    return 0

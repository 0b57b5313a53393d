"""`python -m flow_model export`: run directory -> pretrained directory (config.json + model.safetensors, and the
run's split.json)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="run directory -> pretrained directory (config.json + model.safetensors)")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even if the run kept an EMA")
    p.add_argument("--fp16", action="store_true", help="store the weights in float16")


def run(args: argparse.Namespace) -> int:
    from ..training.checkpoint import export

    model = export(args.run, args.out, use_ema=not args.no_ema, half=args.fp16)
    print(f"exported {model.num_parameters() / 1e6:.2f}M parameters to {args.out}")
    return 0

"""`python -m flow_model encode`: image files -> flat latents (safetensors)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def add_parser(sub) -> None:
    p = sub.add_parser("encode", help="image files -> flat latents (safetensors)")
    p.add_argument("--model", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--crop", choices=("celeba", "none"), default="celeba",
                   help="celeba: the CelebA face square of an aligned image; none: resize the whole image")
    p.add_argument("--standardized", action="store_true", help="store standardised residuals instead of raw latents")
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from ..fileio import save_safetensors
    from ..imaging import celeba_crop, load_image, to_tensor
    from ..training.checkpoint import load_model

    model = load_model(args.model, args.device)
    size = model.config.image_size
    crop = celeba_crop if args.crop == "celeba" else (lambda img, s: img.resize((s, s)))
    x = torch.stack([to_tensor(crop(load_image(p), size)) for p in args.images])
    with torch.no_grad():
        flat = model.flatten_latents(model.encode(x, standardized=args.standardized))
    names = [Path(p).name for p in args.images]
    save_safetensors({"latents": flat}, args.out,
                     metadata={"files": json.dumps(names), "standardized": str(args.standardized).lower()})
    print(f"encoded {len(names)} images to {args.out} ({flat.shape[1]} values each)")
    return 0

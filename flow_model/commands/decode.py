"""`python -m flow_model decode`: flat latents (safetensors) -> PNG files."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def add_parser(sub) -> None:
    p = sub.add_parser("decode", help="flat latents (safetensors) -> PNG files")
    p.add_argument("--model", required=True)
    p.add_argument("--latents", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError, safe_open

    from ..imaging import to_pil
    from ..training.checkpoint import load_model

    model = load_model(args.model, args.device)
    try:
        with safe_open(args.latents, framework="pt") as f:
            meta = f.metadata() or {}
            flat = f.get_tensor("latents")
    except SafetensorError as err:
        raise ValueError(f"cannot read latents from {args.latents}: {err}") from None
    names = json.loads(meta.get("files", "[]")) or [f"{i:04d}.png" for i in range(len(flat))]
    with torch.no_grad():
        images = model.decode(model.unflatten_latents(flat), standardized=meta.get("standardized") == "true")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, img in zip(names, images):
        to_pil(img).save(out / (Path(name).stem + ".png"))
    print(f"decoded {len(images)} images to {out}")
    return 0

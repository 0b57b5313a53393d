"""Time of `python -m app directions` at production scale: encoding, and the 40 classifier fits.

    python bench/directions_speed.py [--limit 14523] [--attributes 4] [--tiny] [--C 1e-4]

Encodes real CelebA faces from ../shared at 64x64 with a freshly initialised reference Glow (the same architecture
and latent size as the trained one; --tiny swaps in a depth-2, hidden-16 net of the same latent size, to time the
fits without the encoding), then times compute_directions twice: once with no classifier fitted (the shared part:
class means, split, feature scaling) and once fitting the first --attributes attributes, and extrapolates to all 40.
Iteration counts on a trained model's latents will differ somewhat from these random-weight ones.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from app.directions import DirectionConfig, compute_directions, encode_images
from flow_model.config import GlowConfig
from flow_model.data import load_images, open_dataset
from flow_model.glow import Glow

CELEBA = ROOT.parent / "shared" / "data" / "celeba"
REFERENCE = dict(image_size=64, n_bits=5, levels=3, depth=16, hidden=128)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, help="faces to use (default: all in ../shared)")
    p.add_argument("--attributes", type=int, default=4, help="attributes whose classifier fit is timed")
    p.add_argument("--tiny", action="store_true", help="depth-2, hidden-16 encoder: same latent size, quick encode")
    p.add_argument("--C", type=float, default=DirectionConfig.C)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    config = GlowConfig(**{**REFERENCE, **({"depth": 2, "hidden": 16} if args.tiny else {})})
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; encoder {config.to_dict()}")
    data = open_dataset(CELEBA, limit=args.limit)
    started = time.perf_counter()
    images, data = load_images(data, config.image_size, workers=2)
    decoded = time.perf_counter()
    model = Glow(config)
    model.initialize(images[:256])
    latents = encode_images(model, images, args.batch_size)
    encoded = time.perf_counter()
    print(f"{len(images)} faces: decode {decoded - started:.1f} s, encode {encoded - decoded:.1f} s "
          f"({len(images) / (encoded - decoded):.0f} images/s), latent dim {latents.shape[1]}")

    labels, names = data.labels[:, : args.attributes], data.attributes[: args.attributes]
    t0 = time.perf_counter()
    compute_directions(latents, labels, names, DirectionConfig(C=args.C, min_count=len(latents)), progress=False)
    shared = time.perf_counter() - t0
    t0 = time.perf_counter()
    d = compute_directions(latents, labels, names, DirectionConfig(C=args.C), progress=False)
    total = time.perf_counter() - t0
    per_attribute = (total - shared) / len(names)
    for name in names:
        stats = d.info[name]["classifier"]
        print(f"  {name:<20} AUC {stats['auc']:.3f}  L-BFGS iterations {stats.get('iterations', 'fallback')}")
    print(f"shared part {shared:.1f} s, {per_attribute:.1f} s per classifier -> about "
          f"{shared + 40 * per_attribute:.0f} s for all 40 attributes (plus decode and encode above)")
    print(f"mean iterations {np.mean([d.info[n]['classifier'].get('iterations', 0) for n in names]):.0f}")


if __name__ == "__main__":
    main()

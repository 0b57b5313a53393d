"""Measure where dlib puts the five landmarks in the training crop: the numbers behind app.align.TEMPLATE.

    python scripts/measure_alignment.py --data ../shared/data/celeba --n 300

Uses full-resolution (178x218) training images only, so the detector sees faces as large as in a typical photo,
and skips the validation names of a run's split.json when one is given.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]

from app.align import LANDMARK_NAMES, FaceAligner, measure_template
from flow_model.data import open_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "celeba"))
    parser.add_argument("--split", default=None, help="a run's split.json; its validation images are left out")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()

    data = open_dataset(args.data)
    held_out = set(json.loads(Path(args.split).read_text())["val"]) if args.split else set()
    files = [f for f, name in zip(data.files, data.names()) if name not in held_out]
    full_size = [f for f in files if Image.open(f).size == (178, 218)][: args.n]
    images = (Image.open(f).convert("RGB") for f in tqdm(full_size, desc="landmarks"))
    mean, std, found = measure_template(FaceAligner(), images)
    print(f"faces found in {found} of {len(full_size)} images; crop fractions (x, y), mean +- std:")
    for name, m, s in zip(LANDMARK_NAMES, mean, std):
        print(f"  {name:20s} ({m[0]:.4f}, {m[1]:.4f}) +- ({s[0]:.3f}, {s[1]:.3f})")
    print("TEMPLATE = np.array([\n" + "".join(f"    [{m[0]:.4f}, {m[1]:.4f}],\n" for m in mean) + "])")
    print(json.dumps({"found": found, "mean": np.round(mean, 4).tolist(), "std": np.round(std, 4).tolist()}))


if __name__ == "__main__":
    main()

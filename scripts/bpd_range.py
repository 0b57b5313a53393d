"""Measure the bits/dim spread of validation faces for the editor's out-of-distribution note.

    python scripts/bpd_range.py --model assets/celeba64 --data ../shared/data/celeba --split assets/celeba64/split.json

Writes MODEL/bpd_range.json (1st, 50th and 99th percentiles), measured exactly as the editor measures an upload:
one flow pass at the point Glow.encode maps (the dequantiser's central noise) of the model-size crop.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.service import BPD_RANGE_FILE, EditorService
from flow_model.data import load_images, open_dataset, select
from flow_model.training.checkpoint import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pretrained model directory; the range is written into it")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True, help="split.json of the model's training run (its 'val' names)")
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args()

    names = json.loads(Path(args.split).read_text())["val"][: args.max_images]
    model = load_model(args.model)
    images, _ = load_images(select(open_dataset(args.data), names), model.config.image_size)
    bpd_range = EditorService(model).measure_bpd_range(images)
    bpd_range.save(Path(args.model) / BPD_RANGE_FILE)
    print(json.dumps(bpd_range.__dict__, indent=2))


if __name__ == "__main__":
    main()

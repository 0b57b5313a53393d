"""Render every editor slider (the default set, then those under "More attributes") at -2, -1, 0, +1, +2 on a few
held-out faces, with the model's calibration (calibration.json) unless --method names one: the sheet to judge by eye
what `python -m app evaluate-edits` measured.

    python scripts/slider_sheet.py --model assets/celeba64 --data ../shared/data/celeba \
        --split assets/celeba64/split.json --out slider_sheet.png [--method auto] [--faces 3]

+1 should be a clearly visible but natural change, +2 a strong one.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from app.service import AUTO_METHOD, METHOD_LABELS, EditorService
from flow_model.data import load_images, open_dataset, select
from flow_model.visualize import image_grid, pyplot

VALUES = (-2.0, -1.0, 0.0, 1.0, 2.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="pretrained directory with directions.safetensors")
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", required=True, help="the run's split.json: faces come from its 'val' names")
    parser.add_argument("--out", required=True)
    parser.add_argument("--method", choices=list(METHOD_LABELS), default=AUTO_METHOD)
    parser.add_argument("--faces", type=int, default=3)
    args = parser.parse_args()

    service = EditorService.load(args.model, align=False)
    if not service.sliders:
        raise SystemExit(f"{args.model} has no attribute directions")
    names = json.loads(Path(args.split).read_text())["val"][: args.faces]
    images, _ = load_images(select(open_dataset(args.data), names), service.image_size, workers=0, progress=False)
    faces = [service.encode(x) for x in images]

    specs = service.sliders + service.more_sliders
    fig, axes = pyplot().subplots(len(specs), 1, figsize=(len(faces) * len(VALUES) * 0.75, len(specs) * 0.85))
    for ax, spec in zip(axes, specs):
        row = [service.edit(face, {spec.label: v}, method=args.method).image for face in faces for v in VALUES]
        ax.imshow(image_grid(torch.stack(row), columns=len(row)))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(spec.label + ("" if spec.default else " (more)"), rotation=0, ha="right", va="center",
                      fontsize=8)
    values = ", ".join(f"{v:+g}" for v in VALUES)
    fig.suptitle(f"{METHOD_LABELS[args.method]} directions at {values} per face", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

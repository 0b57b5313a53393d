"""What photo-resolution edits cost, measured side by side in one run.

    python -m bench.photo_edits [--model assets/celeba64] [--updates 60] [--repeats 10]

- slider update: edit + decode + the image the browser gets (Gradio's gr.Image postprocess, JPEG), alternating
  update by update between the model's 64x64 output enlarged to the display size (the editor before photo-
  resolution edits) and the user's crop plus the upsampled change, at the display size and at 384 px.
- classifier reading: the attribute classifier's before/after note the UI adds under each edit, timed alone.
- whole photo: the edited 12-megapixel photo (4000x3000, face about 1000 px wide), change upsampled to the crop's
  resolution and pasted back; done for the whole-photo view and the download, not per slider move.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app import default_threads
from app.service import EditorService
from app.ui import DISPLAY_FORMAT
from bench.editor import Timer

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "data" / "photos" / "biden2.jpg"
CELEBA = ROOT.parent / "shared" / "data" / "celeba" / "img_align_celeba"


def twelve_megapixels() -> Image.Image:
    """A 4000x3000 photo: a CelebA face enlarged 9x, turned 6 degrees, on a plain background."""
    face = next(Image.open(p).convert("RGB") for p in sorted(CELEBA.glob("*.jpg")) if Image.open(p).size == (178, 218))
    face = face.resize((face.width * 9, face.height * 9), Image.Resampling.BICUBIC)
    face = face.rotate(6.0, expand=True, resample=Image.Resampling.BICUBIC, fillcolor=(120, 140, 110))
    photo = Image.new("RGB", (4000, 3000), (190, 175, 160))
    photo.paste(face, (1300, 700))
    return photo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "celeba64")
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=default_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import gradio as gr

    service = EditorService.load(args.model)
    large = EditorService.load(args.model, display_size=384)  # the same calibrated defaults at a larger view
    output = gr.Image(format=DISPLAY_FORMAT)
    face = service.face_from_image(PHOTO)
    face_large = large.face_from_image(PHOTO)
    rng = np.random.default_rng(0)
    labels = ["Smiling", "Age", "Blond hair"]
    values = np.cumsum(rng.normal(0, 0.1, (args.updates + 5, len(labels))), axis=0).clip(-1, 1)
    ways = {
        f"model output enlarged to {service.display_size} px (before)":
            lambda row: output.postprocess(service.display(service.edit(face, dict(zip(labels, row))).image)),
        f"photo crop + change at {service.display_size} px":
            lambda row: output.postprocess(service.view(face, service.edit(face, dict(zip(labels, row))))),
        "photo crop + change at 384 px":
            lambda row: output.postprocess(large.view(face_large, large.edit(face_large, dict(zip(labels, row))))),
    }
    timers = {name: Timer() for name in ways}
    for i, row in enumerate(values):
        for name, way in ways.items():  # alternating, so drift in the machine's speed hits every way alike
            if i < 5:
                way(row)
                continue
            with timers[name]():
                way(row)
    reading, edited = Timer(), service.edit(face, {"Smiling": 1.0})
    for _ in range(args.updates):
        with reading():
            service.reading(face, edited, {"Smiling": 1.0})
    results = {"threads": torch.get_num_threads(), "load_average": round(os.getloadavg()[0], 1),
               "slider_update": {name: t.summary() for name, t in timers.items()},
               "classifier_reading_per_update": reading.summary()}
    before = results["slider_update"][next(iter(ways))]["wall_p50_ms"]
    for name, summary in results["slider_update"].items():
        summary["x_before"] = round(summary["wall_p50_ms"] / before, 2)

    photo = twelve_megapixels()
    big = service.face_from_image(photo)
    edited = service.edit(big, {"Smiling": 1.0})
    service.edited_photo(big, edited)
    paste = Timer()
    for _ in range(args.repeats):
        with paste():
            service.edited_photo(big, edited)
    summary = paste.summary()
    results["whole_photo_12mp"] = {"photo": f"{photo.width}x{photo.height}", "crop_side": big.photo.side,
                                   "wall_p50_ms": summary["wall_p50_ms"], "wall_p95_ms": summary["wall_p95_ms"]}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

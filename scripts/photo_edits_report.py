"""Figures and numbers for docs/photo_edits.md: photo-resolution edits against the enlarged 64x64 output, and
guided against bicubic upsampling of the model's change.

    python scripts/photo_edits_report.py [--model assets/celeba64] [--out docs]

- photo_edits.png: for three real photos (../shared/data/photos, not CelebA), the input, the editor's output
  before (the 64x64 edit enlarged) and now (the user's crop plus the upsampled change), Smiling +1.
- upsampling.png: the mouth region of one edit with the change upsampled bicubically and guided.
- Printed: a test with a known answer. A sharp-edged change (every pixel darker than the crop's median luminance
  gets a colour shift, so its edges are the photo's own) is reduced to model resolution by area averaging and
  upsampled back by each method; the RMSE against the true change, over the crop and in a band around its edges
  (where halos live), for six photos. And the sharpness kept (mean squared Laplacian of the face region, edited /
  original) by each way of showing a Smiling +1 edit.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from app.photo import UPSAMPLERS, compose, to_image, upsample_change
from app.service import EditorService

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"
SHOWN = ["biden2.jpg", "rose_leslie1.jpg", "alex_lacamoire1.jpg"]
MEASURED = ["obama.jpg", "biden2.jpg", "rose_leslie1.jpg", "kit_harington.jpg", "alex_lacamoire1.jpg", "obama2.jpg"]
EPS = (1e-2, 1e-3, 1e-4)


def laplacian_energy(img: np.ndarray) -> float:
    g = img.astype(np.float64) @ [0.299, 0.587, 0.114]
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float((lap**2).mean())


def known_change(crop: torch.Tensor) -> torch.Tensor:
    """A change whose edges are the photo's: a colour shift on every pixel darker than the median luminance."""
    luma = 0.299 * crop[0] + 0.587 * crop[1] + 0.114 * crop[2]
    dark = (luma < luma.median()).float()
    return torch.stack([40 * dark, -20 * dark, 10 * dark])


def upsampling_errors(service: EditorService) -> dict[str, tuple[float, float]]:
    errors: dict[str, list[tuple[float, float]]] = {}
    for name in MEASURED:
        crop = service.face_from_image(PHOTOS / name).photo.crop
        truth = known_change(crop)
        low = F.interpolate(truth[None], size=(service.image_size,) * 2, mode="area")[0]
        cell = crop.shape[-1] // service.image_size
        dark = truth[:1][None]
        band = (F.max_pool2d(dark, 2 * cell + 1, 1, cell) + F.max_pool2d(-dark, 2 * cell + 1, 1, cell))[0, 0] > 0
        ways = {"bicubic": upsample_change(low, crop / 255, "bicubic")}
        ways.update({f"guided, eps {eps:g}": upsample_change(low, crop / 255, "guided", eps) for eps in EPS})
        for way, up in ways.items():
            e = up - truth
            errors.setdefault(way, []).append((float(e.pow(2).mean().sqrt()), float(e[:, band].pow(2).mean().sqrt())))
    return {way: tuple(np.mean(v, 0)) for way, v in errors.items()}


def labelled(img: Image.Image, text: str, size: int) -> Image.Image:
    tile = Image.new("RGB", (size, size + 22), "white")
    tile.paste(img.resize((size, size), Image.Resampling.LANCZOS), (0, 22))
    ImageDraw.Draw(tile).text((4, 4), text, fill="black")
    return tile


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "celeba64")
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    service = EditorService.load(args.model)
    args.out.mkdir(parents=True, exist_ok=True)

    size, rows, sharpness = 320, [], []
    for name in SHOWN:
        face = service.face_from_image(PHOTOS / name)
        edited = service.edit(face, {"Smiling": 1.0})
        before = service.display(edited.image)
        after = service.edited_crop(face, edited)
        region = slice(face.photo.side // 4, 3 * face.photo.side // 4)
        original = laplacian_energy(np.asarray(service.edited_crop(face))[region, region])
        enlarged = np.asarray(before.resize((face.photo.side,) * 2, Image.Resampling.LANCZOS))
        sharpness.append((name, laplacian_energy(enlarged[region, region]) / original,
                          laplacian_energy(np.asarray(after)[region, region]) / original, edited.strength))
        tiles = [labelled(to_image(face.photo.crop), f"{name}: input (aligned crop, {face.photo.side} px)", size),
                 labelled(before, "before: 64x64 edit, enlarged", size),
                 labelled(after, f"now: photo + upsampled change ({face.photo.side} px)", size)]
        row = Image.new("RGB", (3 * size, size + 22), "white")
        for i, tile in enumerate(tiles):
            row.paste(tile, (i * size, 0))
        rows.append(row)
    sheet = Image.new("RGB", (3 * size, len(rows) * (size + 22)), "white")
    for i, row in enumerate(rows):
        sheet.paste(row, (0, i * (size + 22)))
    sheet.save(args.out / "photo_edits.png")

    face = service.face_from_image(PHOTOS / SHOWN[0])
    edited = service.edit(face, {"Smiling": 1.0})
    side = face.photo.side
    box = (int(side * 0.3), int(side * 0.62), int(side * 0.7), int(side * 0.86))  # the mouth
    tiles = [labelled(to_image(compose(face.photo.crop, edited.change, way)).crop(box), f"{way} upsampling", 400)
             for way in UPSAMPLERS]
    strip = Image.new("RGB", (400 * len(tiles), 422), "white")
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * 400, 0))
    strip.save(args.out / "upsampling.png")

    print("| photo | enlarged 64x64 | photo + change | strength |\n|---|---|---|---|")
    for name, old, new, strength in sharpness:
        print(f"| {name} | {old:.2f} | {new:.2f} | {strength:.2f} |")
    print("\n| upsampling | RMSE (levels) | RMSE near edges |\n|---|---|---|")
    for way, (rmse, edge) in upsampling_errors(service).items():
        print(f"| {way} | {rmse:.2f} | {edge:.2f} |")


if __name__ == "__main__":
    main()

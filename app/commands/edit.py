"""`python -m app edit PHOTO [PHOTO ...] --slider NAME=VALUE ... --out DIR`: the editor's scripting interface.

Each photo comes back whole, at its own resolution, edited exactly as the UI's sliders edit it (the same scale,
method, disentangling and, for the sliders calibrated so, each edit kept to its part of the face), as
DIR/<photo stem>.png. A photo that cannot be edited (no face, not an image) is named
in one error line and the run goes on; the exit status is 1 if any photo failed.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm.auto import tqdm

from flow_model.fileio import atomic_path


def add_parser(sub) -> None:
    p = sub.add_parser("edit", help="edit photos with the editor's sliders; whole photos back at their own resolution",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("photos", nargs="+", type=Path, metavar="PHOTO")
    p.add_argument("--slider", action="append", default=[], metavar="NAME=VALUE",
                   help='a slider and its value, as the UI labels it (case-insensitive), e.g. --slider Smiling=1 '
                        '--slider "Blond hair=0.5"; repeat for several')
    p.add_argument("--out", required=True, type=Path, help="folder for the edited photos (created if missing)")
    p.add_argument("--crop", action="store_true",
                   help="write the aligned face crop at the photo's own resolution instead of the whole photo")
    p.add_argument("--whole-face", dest="local", action="store_false",
                   help="let every edit change the whole face, also for the sliders whose calibration keeps their "
                        "edits to the part of the face the attribute lives in (the UI's checkbox)")
    p.add_argument("--model", default="assets/celeba64", help="pretrained model directory with its directions")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def parse_sliders(items: list[str], labels: list[str]) -> dict[str, float]:
    """NAME=VALUE strings -> {UI label: value}; names match the labels case-insensitively."""
    by_name = {label.casefold(): label for label in labels}
    edits: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--slider {item!r}: expected NAME=VALUE, e.g. Smiling=1")
        label = by_name.get(" ".join(name.split()).casefold())
        if label is None:
            raise ValueError(f"unknown slider {name.strip()!r}; valid: {', '.join(labels)}")
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"--slider {item!r}: {text.strip()!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"--slider {item!r}: the value must be a finite number")
        edits[label] = value
    return edits


def run(args: argparse.Namespace) -> int:
    from flow_model.imaging import ImageError

    from ..service import EditorService

    service = EditorService.load(args.model, args.device)
    edits = parse_sliders(args.slider, [s.label for s in (*service.sliders, *service.more_sliders)])
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"cannot create the output folder {args.out}: {err.strerror or err}") from None
    failed = 0
    bar = tqdm(args.photos, desc="editing", unit="photo", disable=not args.progress or len(args.photos) < 2)
    for path in bar:
        try:
            face = service.face_from_image(path)
            edited = service.edit(face, edits, local=args.local)
            image = service.edited_crop(face, edited) if args.crop else service.edited_photo(face, edited)
            with atomic_path(args.out / f"{path.stem}.png") as tmp:
                image.save(tmp, format="PNG")
            if edited.note:
                tqdm.write(f"note: {path}: {edited.note}", file=sys.stderr)
        except (ImageError, ValueError) as err:
            failed += 1
            tqdm.write(f"error: {path}: {err}", file=sys.stderr)
    done = len(args.photos) - failed
    print(f"wrote {done} of {len(args.photos)} photos to {args.out}" + (f"; {failed} failed" if failed else ""))
    return 1 if failed else 0

"""Release a trained run as the shipped model: weights, figures and numbers for the model card.

    python scripts/build_assets.py --run runs/celeba64 --data ../shared/data/celeba --out assets/celeba64

Exports the EMA or the raw weights, whichever has the lower validation bits/dim (fp16 when that moves it by < 0.01), measures validation bits/dim on the
run's own split, and draws the sample grids, the training curve and the edit strip that MODEL_CARD.md shows.
Run `python -m app directions` into the same folder first for the edit strip.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from app.directions import load_directions
from app.service import EditorService
from flow_model.data import load_images, open_dataset, select
from flow_model.evaluate import evaluate_bpd
from flow_model.fileio import write_text
from flow_model.glow import Glow
from flow_model.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from flow_model.training.checkpoint import model_from_checkpoint
from flow_model.training.curves import plot_run, read_run
from flow_model.visualize import image_grid

STRIP = [("original", None, 0.0), ("+smile", "Smiling", 1.0), ("-smile", "Smiling", -1.0),
         ("+age", "Young", -1.0), ("+blond hair", "Blond_Hair", 1.0)]


def edit_strip(model: Glow, faces: torch.Tensor, out: Path) -> list[list[float]]:
    """Validation faces in rows; columns as in STRIP, each a +-1 move along the shipped classifier direction, decoded
    as the editor decodes it: an edit the model cannot decode is drawn at the largest strength that decodes. Returns
    those strengths, row by row."""
    service = EditorService(model, load_directions(out / "directions.safetensors"), aligner=None)
    cells, strengths = [], []
    for x in faces:
        face = service.encode(x)
        edits = [service.edit(face, {} if name is None else {name: amount}) for _, name, amount in STRIP]
        cells += [e.image for e in edits]
        strengths.append([e.strength for e in edits])
    image_grid(torch.stack(cells), len(STRIP)).save(out / "edit_strip.png")
    return strengths


def shipped_mark(metrics: Path, curve_until: int | None, step: int, chosen: str,
                 bpd32: tuple[float, float]) -> tuple[int, float, float, str] | None:
    """The training curve's star for the shipped weights, or None where the run's own validation point at their
    step already shows them (the trainer validates its EMA weights, so only an EMA it validated at that step)."""
    if curve_until is not None:
        return curve_until, *bpd32, "validation, shipped weights"
    if chosen == "ema" and step in read_run(metrics)[1]:
        return None
    return step, *bpd32, f"validation, shipped {'EMA' if chosen == 'ema' else 'raw'} weights"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--val-max", type=int, default=None, help="evaluate on at most this many validation images")
    parser.add_argument("--strip-faces", type=int, default=8)
    parser.add_argument("--strip-only", action="store_true", help="only redraw the edit strip (after `directions`)")
    parser.add_argument("--curve-from", help="the metrics.jsonl the training curve is drawn from (default: the run's; "
                        "a zero-step run from a continuation point has no curve of its own: give its source run's)")
    parser.add_argument("--curve-until", type=int, help="draw the curve up to this step, where the released weights "
                        "were taken (the continuation point's step), and mark them there")
    args = parser.parse_args()
    out = Path(args.out)
    torch.manual_seed(0)

    split = json.loads((Path(args.run) / "split.json").read_text())
    val = select(open_dataset(args.data), split["val"][: args.val_max] if args.val_max else split["val"])
    if args.strip_only:
        model = Glow.from_pretrained(out)
        images, _ = load_images(val.subset(range(args.strip_faces)), model.config.image_size)
        numbers = json.loads((out / "release_numbers.json").read_text())
        numbers["edit_strip_strengths"] = edit_strip(model, images, out)
        write_text(out / "release_numbers.json", json.dumps(numbers, indent=2) + "\n")
        print(json.dumps(numbers["edit_strip_strengths"]))
        return
    state = load_checkpoint(Path(args.run) / CHECKPOINT_NAME)
    candidates = {name: model_from_checkpoint(state, use_ema=name == "ema", source=args.run) for name in ("ema", "raw")}
    images, val = load_images(val, candidates["raw"].config.image_size)
    scores = {name: evaluate_bpd(m, images, progress=True) for name, m in candidates.items()}
    chosen = min(scores, key=lambda name: scores[name][0])
    fp32 = candidates[chosen]
    bpd32 = scores[chosen]
    fp32.save_pretrained(out, dtype=torch.float16)
    fp16 = Glow.from_pretrained(out)
    bpd16 = evaluate_bpd(fp16, images, progress=True)
    if abs(bpd16[0] - bpd32[0]) >= 0.01:
        fp32.save_pretrained(out)
    model = Glow.from_pretrained(out)
    numbers = {"val_images": len(images), "weights": chosen, "val_bpd_by_weights": scores,
               "val_bpd_fp32": bpd32, "val_bpd_fp16": bpd16,
               "stored": "float16" if abs(bpd16[0] - bpd32[0]) < 0.01 else "float32",
               "parameters": model.num_parameters(), "n_bits": model.config.n_bits,
               "image_size": model.config.image_size}

    with torch.no_grad():
        for t in (0.0, 0.5, 0.7, 1.0):
            grid = model.sample(16, temperature=t, generator=torch.Generator().manual_seed(0))
            image_grid(grid, 8).save(out / f"samples_t{t:g}.png")
    metrics = args.curve_from or Path(args.run) / "metrics.jsonl"
    plot_run(metrics, out / "training_curve.png",
             title=f"Glow, {model.config.n_bits}-bit {model.config.image_size}x{model.config.image_size}",
             shipped=shipped_mark(metrics, args.curve_until, state["meta"]["step"], chosen, bpd32),
             until=args.curve_until)
    shutil.copy(Path(args.run) / "split.json", out / "split.json")

    numbers["edit_strip_columns"] = [label for label, _, _ in STRIP]
    write_text(out / "release_numbers.json", json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()

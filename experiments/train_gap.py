"""Is the train/held-out gap the model learning its training faces, or a difference between the faces compared?

    python -m experiments train-gap --model assets/celeba64 --out experiments/train_gap.md

The model card reports a release's bits/dim on its validation faces and on training faces; the difference is read
as memorisation. But CelebA's files are stored at two sizes (178x218, and half that for most of this subset's), the
_extra folder's faces were re-rendered for this project, and the first files of a folder are not a random draw of
it. This page scores, with one model and one noise seed, the validation faces and several samples of training faces,
each split by its files' stored width, and compares them two ways: the plain difference of the means, and the
difference within each stored width weighted by the validation faces' shares (what is left once the faces compared
are of one kind).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from flow_model.data import ImageSet, load_images, open_dataset, random_subset, select
from flow_model.evaluate import bits_per_image, mean_and_se
from flow_model.fileio import write_text
from flow_model.training.checkpoint import load_model

from .ablation import kept_account

ACCOUNT_PROMPT = "what the numbers say about the gap the model card reports"


@dataclass
class Scores:
    """Per-image bits/dim of one set of faces and the stored width of each face's file."""

    bits: torch.Tensor
    widths: list[int]

    def group(self, width: int) -> torch.Tensor:
        return self.bits[torch.tensor([w == width for w in self.widths])]


def compare(val: Scores, train: Scores) -> dict:
    """Held-out minus training bits/dim, plainly and within stored widths (weighted by the validation faces' share
    of each width; widths the training sample lacks are left out and the weights renormalised), each with its
    standard error (the two sets are different faces, so their errors add in quadrature)."""
    (vm, vs), (tm, ts) = mean_and_se(val.bits), mean_and_se(train.bits)
    shares = {w: val.widths.count(w) / len(val.widths) for w in sorted(set(val.widths)) if w in train.widths}
    total = sum(shares.values())
    gap = se2 = 0.0
    for w, share in shares.items():
        (v, v_se), (t, t_se) = mean_and_se(val.group(w)), mean_and_se(train.group(w))
        weight = share / total
        gap += weight * (v - t)
        se2 += weight ** 2 * (v_se ** 2 + t_se ** 2)
    return {"gap": vm - tm, "gap_se": math.hypot(vs, ts), "within_width_gap": gap,
            "within_width_gap_se": math.sqrt(se2)}


def stored_widths(data: ImageSet) -> list[int]:
    """Each file's stored width, read from its header."""
    widths = []
    for path in data.files:
        with Image.open(path) as image:
            widths.append(image.size[0])
    return widths


def summary(scores: Scores) -> dict:
    mean, se = mean_and_se(scores.bits)
    groups = {}
    for w in sorted(set(scores.widths)):
        g = scores.group(w)
        groups[w] = {"n": len(g), "bpd": g.mean().item(), "se": mean_and_se(g)[1]}
    return {"n": len(scores.bits), "bpd": mean, "se": se, "by_width": groups}


def measure(model_dir: Path, data_root: Path, split_path: Path, faces: int, first: int, seed: int,
            batch_size: int = 64) -> dict:
    """The validation faces and the training samples (the first `first` files of the validation faces' folder;
    `faces` drawn at random from that folder; up to `faces` from each other folder), scored and compared."""
    model = load_model(model_dir, "cpu")
    split = json.loads(Path(split_path).read_text())
    val_dirs = sorted({n.split("/", 1)[0] for n in split["val"]})
    data = open_dataset(data_root)
    train = set(split["train"])
    by_folder: dict[str, list[str]] = {}
    for name in data.names():
        if name in train:
            by_folder.setdefault(name.split("/", 1)[0], []).append(name)
    home = [n for d in val_dirs for n in by_folder.get(d, [])]
    first_files = set(sorted(n for n in data.names() if n.split("/", 1)[0] in val_dirs)[:first])
    samples = {"validation": select(data, split["val"]),
               f"training, the first {first} files of {', '.join(val_dirs)}":
                   select(data, [n for n in home if n in first_files]),
               f"training, a random {min(faces, len(home))} of {', '.join(val_dirs)}":
                   random_subset(select(data, home), min(faces, len(home)), seed)}
    for folder, names in sorted(by_folder.items()):
        if folder not in val_dirs:
            samples[f"training, a random {min(faces, len(names))} of {folder}"] = random_subset(
                select(data, names), min(faces, len(names)), seed)
    scores = {}
    for label, subset in samples.items():
        images, used = load_images(subset, model.config.image_size, None, 1, progress=False)
        scores[label] = Scores(bits_per_image(model, images, batch_size, seed), stored_widths(used))
    val = scores["validation"]
    return {"model": str(model_dir), "seed": seed,
            "sets": {label: {**summary(s), **({} if label == "validation" else compare(val, s))}
                     for label, s in scores.items()}}


def write_report(results: dict, out: Path, command: str) -> None:
    """The markdown page and its raw JSON beside it; a hand-written `## Account` of an existing page is kept."""
    sets = results["sets"]
    widths = sorted({int(w) for s in sets.values() for w in s["by_width"]})
    lines = ["| faces | n | bits/dim | " + " | ".join(f"stored {w} px wide: n, bits/dim" for w in widths)
             + " | held out minus these | within stored widths |",
             "|---|---|---|" + "---|" * len(widths) + "---|---|"]
    for label, s in sets.items():
        cells = [f"{s['by_width'][w]['n']}, {s['by_width'][w]['bpd']:.4f} ± {s['by_width'][w]['se']:.4f}"
                 if w in s["by_width"] else "-" for w in widths]
        gap = (f"{s['gap']:+.4f} ± {s['gap_se']:.4f} | {s['within_width_gap']:+.4f} ± "
               f"{s['within_width_gap_se']:.4f}") if "gap" in s else "- | -"
        lines.append(f"| {label} | {s['n']} | {s['bpd']:.4f} ± {s['se']:.4f} | " + " | ".join(cells) + f" | {gap} |")
    raw = out.with_suffix(".json").name
    page = (f"# The train/held-out gap: which faces are compared\n\nWritten by `{command}`; raw numbers: "
            f"[{raw}]({raw}). Model `{results['model']}`, one noise seed ({results['seed']}) for every set. What "
            "each column means is in the module's docstring (experiments/train_gap.py).\n\n" + "\n".join(lines)
            + "\n\n")
    write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    write_text(out, page + kept_account(out, ACCOUNT_PROMPT))

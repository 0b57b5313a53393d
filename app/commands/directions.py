"""`python -m app directions`: encode a labelled CelebA folder and write the editor's attribute directions."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("directions", help="attribute directions (mean difference, classifier) from CelebA labels")
    p.add_argument("--model", required=True, help="pretrained directory or run directory")
    p.add_argument("--data", required=True, help="CelebA-layout folder: img_align_celeba/ + list_attr_celeba.txt")
    p.add_argument("--out", required=True, help="directions file to write (.safetensors)")
    p.add_argument("--split", help="a model's split.json: fit on its 'train' faces only, so the faces the model is "
                   "validated on (and edits are evaluated on) stay unseen")
    p.add_argument("--limit", type=int, help="use only the first N labelled images")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--val-fraction", type=float, help="held out to score the directions (default 0.2)")
    p.add_argument("--C", type=float, help="inverse L2 strength of the logistic regression, sklearn's C (default 1e-4)")
    p.add_argument("--nullspace", nargs="*", metavar="ATTRIBUTE",
                   help="attributes to fit a nullspace basis for, so the editor can hold them by it (default: Male "
                   "Young Smiling; none: give the flag alone)")
    p.add_argument("--nullspace-rounds", type=int, help="INLP rounds past the classifier normal (default 4)")
    p.add_argument("--gender", help="attribute whose two groups the within-gender mean differences are taken in "
                   "(default: Male; 'none': no within-gender differences)")
    p.add_argument("--figures", help="folder for the figures (default: the folder of --out)")
    p.add_argument("--seed", type=int, help="train/validation split (default 0)")
    p.add_argument("--workers", type=int, default=2, help="image decoding processes")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (for encoding)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from flow_model.data import load_images, open_dataset, select
    from flow_model.device import resolve_device
    from flow_model.training.checkpoint import load_model

    from ..direction_report import auc_table, plot_aucs, plot_projections
    from ..directions import DirectionConfig, compute_directions, encode_images, split_indices

    for flag, value in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if value is not None and value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    given = {"val_fraction": args.val_fraction, "seed": args.seed, "C": args.C, "nullspace": args.nullspace,
             "nullspace_rounds": args.nullspace_rounds}
    given = {k: v for k, v in given.items() if v is not None}
    if args.gender is not None:  # asked for by name, so it must be one of the labels
        given["gender"] = None if args.gender.lower() == "none" else args.gender
    config = DirectionConfig(**given)
    out = Path(args.out)
    figures = Path(args.figures) if args.figures else out.parent

    model = load_model(args.model, resolve_device(args.device))
    data = open_dataset(args.data, limit=args.limit)
    if data.labels is None:
        raise ValueError(f"{args.data} has no attribute labels: directions need the CelebA layout "
                         "(img_align_celeba/ and list_attr_celeba.txt)")
    unknown = [a for a in [*config.nullspace, *([config.gender] if given.get("gender") else [])]
               if a not in data.attributes]
    if unknown:
        raise ValueError(f"--nullspace or --gender names attributes the labels do not have: {unknown}; valid: "
                         f"{data.attributes}")
    if args.split:
        try:
            train = json.loads(Path(args.split).read_text())["train"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"cannot read a 'train' list from {args.split}: {err!r}") from None
        data = select(data, train)
        if len(data) == 0:
            raise ValueError(f"none of the training faces of {args.split} are in {args.data}")
    started = time.perf_counter()
    images, data = load_images(data, model.config.image_size, workers=args.workers, progress=args.progress)
    decoded = time.perf_counter()
    latents = encode_images(model, images, args.batch_size, progress=args.progress)
    encoded = time.perf_counter()
    directions = compute_directions(latents, data.labels, data.attributes, config,
                                    model_config=model.config.to_dict(), progress=args.progress)
    fitted = time.perf_counter()
    directions.save(out)

    print(auc_table(directions))
    _, val = split_indices(len(latents), config.val_fraction, config.seed)
    stem = out.name.split(".")[0]
    plot_aucs(directions, figures / f"{stem}_auc.png")
    shown = plot_projections(directions, latents[val], data.labels[val] > 0, figures / f"{stem}_projections.png")
    for name, basis in directions.nullspaces.items():
        aucs = directions.info[name]["nullspace"]["auc"]
        print(f"nullspace of {name}: {len(basis)} directions (held-out AUC of a classifier refitted with the first "
              f"1, 2, ... removed: {', '.join(f'{a:.3f}' for a in aucs)})")
    if directions.gender_reader is not None:
        r = directions.gender_reader
        own = [n for n in directions.names if not directions.info[n]["within_gender"]["fallback"]]
        print(f"within-gender mean differences for {len(own)} attributes (by {r['attribute']}; the latent's "
              f"reading of it right on {r['accuracy']:.1%} of the images)")
    print(f"wrote {len(directions.names)} attributes x {len(directions.methods)} methods "
          f"({directions.latent_dim}-dim standardised latents of {len(latents)} images) to {out}")
    print(f"figures: {figures / f'{stem}_auc.png'}, {figures / f'{stem}_projections.png'} ({', '.join(shown)})")
    print(f"time: decode {decoded - started:.1f} s, encode {encoded - decoded:.1f} s, "
          f"directions {fitted - encoded:.1f} s, total {time.perf_counter() - started:.1f} s")
    return 0

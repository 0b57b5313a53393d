"""`python -m app train-classifier`: the attribute classifier that evaluate-edits measures edits with.

Trains on the model's training split (every labelled face not in its split.json "val" list) and reports accuracy
per attribute on the validation faces, in the classifier's config.json and a markdown card beside the weights.
"""
from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from flow_model.commands import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("train-classifier", help="train the attribute classifier that scores edits (evaluate-edits)")
    p.add_argument("--data", required=True, help="CelebA-layout folder (img_align_celeba*/ + list_attr_celeba.txt)")
    p.add_argument("--split", required=True, help="the Glow model's split.json: its 'val' faces are held out")
    p.add_argument("--out", default="assets/attribute_classifier", help="directory for config.json, "
                                                                        "model.safetensors and CARD.md")
    p.add_argument("--cache", help="uint8 image cache file (e.g. runs/classifier_cache.safetensors)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n-bits", type=int, default=5)
    p.add_argument("--widths", default="32,64,128,192", help="channels per stage, comma separated")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
    p.add_argument("--limit", type=int, help="use only the first N labelled images (smoke tests)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--workers", type=int, default=1, help="image decoding processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--members", type=positive_int, default=1,
                   help="train this many classifiers alike (seeds --seed, --seed + 1, ...) and save them as one "
                        "instrument that reads their mean probability (experiments/instruments.md: one net's "
                        "verdicts move with its seed)")
    p.add_argument("--balance", default="none",
                   help="heads trained on reweighted faces so they read apart from the sliders' attributes, comma "
                        "separated, 'leak' for those edits are measured leaking into (Male, Young, Smiling) or "
                        "'none' (the shipped instrument; experiments/instruments.md measures both)")
    p.add_argument("--balance-against", help="the attributes those heads are made independent of, comma separated "
                                             "(default: every slider's attribute that the labels have)")
    p.add_argument("--balance-clip", type=float, default=10.0, help="largest weight (smallest: its inverse)")


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from flow_model.data import load_images, open_dataset

    from ..classifier import (CARD_NAME, Balance, ClassifierConfig, ClassifierEnsemble, TrainSettings, accuracy_table,
                              balancing_weights, card_markdown, train_classifier)
    from ..edit_evaluation import LEAK_ATTRIBUTES
    from ..service import SLIDERS
    from flow_model.fileio import write_text

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(max(1, args.threads))
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    data = open_dataset(args.data, limit=args.limit)
    if data.labels is None:
        raise ValueError(f"{args.data} has no attribute labels (list_attr_celeba.txt)")
    try:
        val_names = set(json.loads(Path(args.split).read_text())["val"])
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{args.split} is not a split file with a 'val' list: {err}") from None
    names = list(data.attributes)
    split = lambda text: tuple(a.strip() for a in text.split(",") if a.strip())  # noqa: E731
    chosen = args.balance.strip().lower()
    heads = (() if chosen == "none" else tuple(a for a in LEAK_ATTRIBUTES if a in names) if chosen == "leak"
             else split(args.balance))
    against = (split(args.balance_against) if args.balance_against else
               tuple(s.attribute for s in SLIDERS if s.attribute in names))
    balance = Balance(heads, against, clip=args.balance_clip)
    balance.check(names)  # before the long image loading
    images, data = load_images(data, args.image_size, cache=args.cache, workers=args.workers)
    is_val = np.array([n in val_names for n in data.names()])
    if not is_val.any() or is_val.all():
        raise ValueError(f"the split leaves {int(is_val.sum())} validation and {int((~is_val).sum())} training faces")
    config = ClassifierConfig(attributes=names, image_size=args.image_size, n_bits=args.n_bits,
                              widths=widths)
    train_idx, val_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    weights, balanced = balancing_weights(data.labels[train_idx], names, balance) if heads else (None, {})
    for head, b in balanced.items():
        print(f"{head} balanced against {len(b['against'])} attributes (left out: {b['skipped'] or 'none'}); "
              f"effective share of faces {b['effective_share']:.2f}, largest gap left {b['largest_gap']:.3f}")
    members, infos, member_tables = [], [], []
    train_images, val_images = images[torch.from_numpy(train_idx)], images[torch.from_numpy(val_idx)]
    for seed in range(args.seed, args.seed + args.members):
        settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                                 max_minutes=args.max_minutes)
        model, info = train_classifier(train_images, data.labels[train_idx], config, settings, weights=weights)
        members.append(model)
        infos.append({**info, "seed": seed})
        member_tables.append(accuracy_table(model.predict(val_images)[0], data.labels[val_idx], config.attributes))
    instrument = members[0] if len(members) == 1 else ClassifierEnsemble(members)
    table = accuracy_table(instrument.predict(val_images)[0], data.labels[val_idx], config.attributes)
    metrics = {"validation": table, "n_train": int(len(train_idx)), "n_val": int(len(val_idx)),
               "batch_size": args.batch_size, "threads": args.threads, "planned_epochs": args.epochs,
               "train": infos, "balance": {**asdict(balance), "heads_info": balanced}}
    if len(members) > 1:
        metrics["members"] = [{"seed": i["seed"], "mean_accuracy": float(np.mean([m["accuracy"] for m in t.values()])),
                               **{a: t[a]["accuracy"] for a in ("Male", "Young", "Smiling") if a in t}}
                              for i, t in zip(infos, member_tables)]
    instrument.save_pretrained(args.out, metrics)
    n_params = sum(p.numel() for p in members[0].parameters())
    write_text(Path(args.out) / CARD_NAME, card_markdown(metrics, config, infos[0], n_params))
    mean = float(np.mean([m["accuracy"] for m in table.values()]))
    print(f"validation accuracy (mean of {len(table)} attributes, {len(val_idx)} faces"
          + (f", the {len(members)} members' mean probability" if len(members) > 1 else "") + f"): {mean:.3f}")
    for name in ("Smiling", "Male", "Young", "Eyeglasses", "Blond_Hair", "Bald"):
        if name in table:
            print(f"  {name:12s} acc {table[name]['accuracy']:.3f} AUC {table[name]['auc']:.3f}")
    minutes = sum(i["seconds"] for i in infos) / 60
    print(f"wrote {args.out}/ ({len(members)} x {n_params:,} parameters, {minutes:.1f} min)")
    return 0

"""`python -m experiments ablation`: the Flow++ Table 2 ablation at equal wall-clock per configuration."""
from __future__ import annotations

import argparse
import shlex

from flow_model.commands import add_model_options
from flow_model.config import MODEL_FIELDS

from ..ablation import PIECES, AblationConfig, run_ablation

MODEL_OPTIONS = tuple(name for name in MODEL_FIELDS if name not in PIECES)  # the pieces are what the ablation varies
TRAIN_OPTIONS = ("batch_size", "optimizer", "lr", "warmup_steps", "grad_clip", "ema", "val_fraction", "val_max",
                 "workers", "cache", "limit", "device", "precision", "init_batch", "log_every", "ckpt_every", "sample_every")


def add_parser(sub) -> None:
    p = sub.add_parser("ablation", help="train Flow++ and its ablations for equal wall-clock; table, plot, report",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--data", required=True, help="dataset folder (CelebA layout or any images)")
    p.add_argument("--out", required=True, help="folder for one run per configuration, results.json and the plot")
    p.add_argument("--minutes-per-config", type=float, required=True, help="training wall-clock per configuration")
    p.add_argument("--variants", nargs="+",
                   help="a subset of flowpp uniform_dequant affine_coupling no_attention glow (default: all five)")
    p.add_argument("--curve-points", type=int, help="validations per configuration along the way (default 5)")
    p.add_argument("--importance-samples", type=int, help="also report the K-sample bound at the end (default 1: off)")
    p.add_argument("--seed", type=int, help="the same for every configuration (default 0)")
    p.add_argument("--report", help="markdown report to write (default experiments/ablation.md)")
    add_model_options(p.add_argument_group("model, shared by all configurations (defaults: GlowConfig's)"),
                      exclude=PIECES)
    train = p.add_argument_group("training, shared by all configurations (defaults: TrainConfig's)")
    for name in TRAIN_OPTIONS:
        kind = {"optimizer": str, "device": str, "precision": str, "cache": str, "lr": float, "grad_clip": float,
                "ema": float, "val_fraction": float}.get(name, int)
        train.add_argument("--" + name.replace("_", "-"), type=kind)


def _flags(given: dict) -> list[str]:
    """The options as a command line again, for the report's one-command reproduction."""
    flags = []
    for name, value in given.items():
        flags.append("--" + name.replace("_", "-"))
        flags += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return flags


def run(args: argparse.Namespace) -> int:
    given = vars(args)
    config = AblationConfig(
        **{k: v for k, v in given.items() if k not in MODEL_OPTIONS + TRAIN_OPTIONS},
        model={k: v for k, v in given.items() if k in MODEL_OPTIONS},
        train={k: v for k, v in given.items() if k in TRAIN_OPTIONS},
    )
    command = "python -m experiments ablation " + shlex.join(_flags(given))
    results = run_ablation(config, command)
    for r in results:
        print(f"{r['label']:<42} {r['val_bpd']:.4f} ± {r['val_bpd_se']:.4f} bits/dim  "
              f"{r['parameters'] / 1e6:7.3f}M params  {r['images_per_s']:8.1f} images/s  {r['steps']} steps")
    print(f"wrote {config.out}/results.json, the plot and {config.report}")
    return 0

"""`python -m flow_model train`: a new run, a run started from a release (--init-from), or --resume of one."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

from ..commands import add_model_options, positive_int
from ..config import MODEL_FIELDS, GlowConfig


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train a Glow on a CelebA-layout folder or any folder of images",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--data", required=False, help="dataset folder (CelebA layout or any images)")
    p.add_argument("--out", required=True, help="run directory: checkpoint, metrics, samples")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add_model_options(p.add_argument_group("model (ignored with --resume: the checkpoint's config is used)"))
    opt = p.add_argument_group("training")
    opt.add_argument("--batch-size", type=positive_int)
    opt.add_argument("--optimizer", choices=("adam", "adamax"))
    opt.add_argument("--lr", type=float)
    opt.add_argument("--dequant-lr", type=float, help="learning rate of the variational dequantiser (default: --lr); "
                     "with --init-from RELEASE --dequant variational its fresh dequantiser wants more than the flow")
    opt.add_argument("--dequant-weight-decay", type=float, help="decoupled (AdamW-style) weight decay of the "
                     "variational dequantiser's conv weights, scaled by its learning rate (default 0: none)")
    opt.add_argument("--warmup-steps", type=int)
    opt.add_argument("--cooldown", dest="cooldown_steps", type=positive_int, metavar="STEPS",
                     help="from the current step, lower the learning rate linearly to 0 over STEPS steps, then stop "
                     "with a final validation (run it on a copy of a run to release from; the original keeps its "
                     "constant rate and can go on); given again with --resume of a run that already has one, the "
                     "cooldown keeps its start step and takes the new length")
    opt.add_argument("--grad-clip", type=float)
    opt.add_argument("--ema", type=float, help="EMA decay of the weights, e.g. 0.999 (0 = off)")
    opt.add_argument("--max-steps", type=int)
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--max-minutes", type=float, help="stop cleanly, with a final checkpoint, after this long")
    opt.add_argument("--ckpt-every", type=positive_int)
    opt.add_argument("--sample-every", type=positive_int)
    opt.add_argument("--log-every", type=positive_int)
    opt.add_argument("--val-fraction", type=float)
    opt.add_argument("--val-max", type=int, help="evaluate at most this many validation images per epoch")
    opt.add_argument("--seed", type=int)
    opt.add_argument("--workers", type=int)
    opt.add_argument("--cache", help="file for the preprocessed uint8 images (built once, then reused)")
    opt.add_argument("--limit", type=positive_int, help="use only the first N images")
    opt.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    opt.add_argument("--precision", choices=("fp32", "bf16", "auto"),
                     help="bf16: the coupling nets run under bf16 autocast (ActNorm, 1x1 convs, log-determinants, "
                     "priors and the loss stay fp32); auto (default): bf16 only where the hardware has it natively "
                     "(avx512_bf16/amx_bf16 CPUs, bf16-capable GPUs), else fp32")
    opt.add_argument("--max-bad-steps", type=positive_int, help="stop after this many non-finite steps in a row")
    opt.add_argument("--init-batch", type=positive_int, help="images for ActNorm's data-dependent init")
    opt.add_argument("--init-from", help="start from a pretrained directory (a release such as assets/celeba64): its "
                     "config, weights and ActNorm state, a fresh optimizer and warm-up, and its split.json's "
                     "validation images (unless --val-split is given)")
    opt.add_argument("--val-split", help="a split.json whose 'val' list is the validation set; all else trains")
    opt.add_argument("--image-dirs", nargs="+", help="CelebA layout: which img_align_celeba* folders to use "
                     "(default: all of them)")
    opt.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    from .trainer import Trainer, TrainConfig

    given = vars(args)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    resume = given.pop("resume", False)
    if resume:
        stored = load_checkpoint(Path(args.out) / CHECKPOINT_NAME)["meta"]["train_config"]
        train = TrainConfig.from_stored({**stored, **{k: v for k, v in given.items() if k in train_fields}})
        model_config = None
    else:
        if "data" not in given:
            raise ValueError("--data is required for a new run")
        if (Path(args.out) / CHECKPOINT_NAME).exists():
            raise ValueError(f"{args.out} already holds a run; pass --resume to continue it or pick another --out")
        train = TrainConfig(**{k: v for k, v in given.items() if k in train_fields})
        model_args = {k: v for k, v in given.items() if k in MODEL_FIELDS}
        if train.init_from:
            source = GlowConfig.load(Path(train.init_from) / "config.json")
            differ = {k: v for k, v in model_args.items() if getattr(source, k) != v}
            model_config = dataclasses.replace(source, **differ)
            if not (source.same_weights(model_config) or source.adds_dequantizer(model_config)):
                raise ValueError(f"--init-from {train.init_from} is a model with "
                                 + ", ".join(f"{k}={getattr(source, k)!r}" for k in differ)
                                 + f"; drop {', '.join('--' + k.replace('_', '-') for k in differ)} or pick another "
                                 "model (the changes it allows are --dropout, which only training sees, and "
                                 "--dequant variational on a uniform-noise model)")
        else:
            model_config = GlowConfig(**model_args)
    trainer = Trainer(train, model_config, resume=resume)
    if trainer.is_main:
        logging.info("model: %s, %.2fM parameters", json.dumps(trainer.model_config.to_dict()),
                     trainer.model.num_parameters() / 1e6)
    result = trainer.run()
    if trainer.is_main and result:
        print(f"validation: {result['val_bpd']:.4f} ± {result['val_bpd_se']:.4f} bits/dim "
              f"({result['n_bits']}-bit, {result['image_size']}x{result['image_size']}) at step {result['step']}")
    return 0

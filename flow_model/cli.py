"""`python -m flow_model COMMAND ...`: train, eval, sample, encode, decode, export, directions."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch

from . import directions_command
from . import ablation_command
from .config import COND_NETS, COUPLINGS, DEQUANTS, PERMUTATIONS, GlowConfig

MODEL_FIELDS = ("image_size", "n_bits", "levels", "depth", "hidden", "coupling", "permutation", "cond_net", "dequant",
                "mixture_components", "attention_heads", "cond_blocks", "dropout", "dequant_depth", "dequant_hidden")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a Glow on a CelebA-layout folder or any folder of images",
                       argument_default=argparse.SUPPRESS)
    p.add_argument("--data", required=False, help="dataset folder (CelebA layout or any images)")
    p.add_argument("--out", required=True, help="run directory: checkpoint, metrics, samples")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    model = p.add_argument_group("model (ignored with --resume: the checkpoint's config is used)")
    model.add_argument("--image-size", type=_positive_int)
    model.add_argument("--n-bits", type=_positive_int)
    model.add_argument("--levels", type=_positive_int)
    model.add_argument("--depth", type=_positive_int)
    model.add_argument("--hidden", type=_positive_int)
    model.add_argument("--coupling", choices=COUPLINGS)
    model.add_argument("--permutation", choices=PERMUTATIONS)
    model.add_argument("--cond-net", choices=COND_NETS)
    model.add_argument("--dequant", choices=DEQUANTS)
    model.add_argument("--mixture-components", type=_positive_int)
    model.add_argument("--attention-heads", type=_positive_int)
    model.add_argument("--cond-blocks", type=_positive_int)
    model.add_argument("--dropout", type=float)
    model.add_argument("--dequant-depth", type=_positive_int)
    model.add_argument("--dequant-hidden", type=_positive_int)
    opt = p.add_argument_group("training")
    opt.add_argument("--batch-size", type=_positive_int)
    opt.add_argument("--optimizer", choices=("adam", "adamax"))
    opt.add_argument("--lr", type=float)
    opt.add_argument("--warmup-steps", type=int)
    opt.add_argument("--grad-clip", type=float)
    opt.add_argument("--ema", type=float, help="EMA decay of the weights, e.g. 0.999 (0 = off)")
    opt.add_argument("--max-steps", type=int)
    opt.add_argument("--epochs", type=int)
    opt.add_argument("--max-minutes", type=float, help="stop cleanly, with a final checkpoint, after this long")
    opt.add_argument("--ckpt-every", type=_positive_int)
    opt.add_argument("--sample-every", type=_positive_int)
    opt.add_argument("--log-every", type=_positive_int)
    opt.add_argument("--val-fraction", type=float)
    opt.add_argument("--val-max", type=int, help="evaluate at most this many validation images per epoch")
    opt.add_argument("--seed", type=int)
    opt.add_argument("--workers", type=int)
    opt.add_argument("--cache", help="file for the preprocessed uint8 images (built once, then reused)")
    opt.add_argument("--limit", type=_positive_int, help="use only the first N images")
    opt.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    opt.add_argument("--amp", choices=("none", "bf16", "fp16"), help="autocast dtype (CUDA only)")
    opt.add_argument("--max-bad-steps", type=_positive_int, help="stop after this many non-finite steps in a row")
    opt.add_argument("--init-batch", type=_positive_int, help="images for ActNorm's data-dependent init")
    opt.add_argument("--init-from", help="start from a pretrained directory (a release such as assets/celeba64): its "
                     "config, weights and ActNorm state, a fresh optimizer and warm-up, and its split.json's "
                     "validation images (unless --val-split is given)")
    opt.add_argument("--val-split", help="a split.json whose 'val' list is the validation set; all else trains")
    opt.add_argument("--image-dirs", nargs="+", help="CelebA layout: which img_align_celeba* folders to use "
                     "(default: all of them)")
    opt.add_argument("--no-progress", dest="progress", action="store_false")


def _train(args: argparse.Namespace) -> int:
    from .checkpoint import CHECKPOINT_NAME, load_checkpoint
    from .train import Trainer, TrainConfig

    given = vars(args)
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    resume = given.pop("resume", False)
    if resume:
        stored = load_checkpoint(Path(args.out) / CHECKPOINT_NAME)["meta"]["train_config"]
        train = TrainConfig(**{**stored, **{k: v for k, v in given.items() if k in train_fields}})
        model_config = None
    else:
        if "data" not in given:
            raise ValueError("--data is required for a new run")
        if (Path(args.out) / CHECKPOINT_NAME).exists():
            raise ValueError(f"{args.out} already holds a run; pass --resume to continue it or pick another --out")
        train = TrainConfig(**{k: v for k, v in given.items() if k in train_fields})
        model_args = {k: v for k, v in given.items() if k in MODEL_FIELDS}
        if train.init_from:
            model_config = GlowConfig.load(Path(train.init_from) / "config.json")
            differ = {k: v for k, v in model_args.items() if getattr(model_config, k) != v}
            if differ:
                raise ValueError(f"--init-from {train.init_from} is a model with "
                                 + ", ".join(f"{k}={getattr(model_config, k)!r}" for k in differ)
                                 + f"; drop {', '.join('--' + k.replace('_', '-') for k in differ)} or pick another model")
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


def _eval(args: argparse.Namespace) -> int:
    from .data import load_images, open_dataset, select
    from .evaluate import evaluate_bpd
    from .train import load_model

    model = load_model(args.model, args.device)
    data = open_dataset(args.data, limit=args.limit)
    if args.split:
        split = json.loads(Path(args.split).read_text())
        if not isinstance(split, dict) or args.subset not in split:
            raise ValueError(f"{args.split} has no {args.subset!r} list; pass the split.json of a run")
        data = select(data, split[args.subset])
    images, used = load_images(data, model.config.image_size, None, args.workers)
    mean, se = evaluate_bpd(model, images, args.batch_size, args.seed, args.importance_samples, progress=True)
    c = model.config
    print(f"{mean:.4f} ± {se:.4f} bits/dim (mean ± s.e., {len(used)} images, {c.n_bits}-bit, "
          f"{c.image_size}x{c.image_size}, dequant={c.dequant}, importance samples={args.importance_samples})")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from .train import load_model
    from .visualize import image_grid

    model = load_model(args.model, args.device)
    with torch.no_grad():
        images = model.sample(args.n, args.temperature, generator=torch.Generator().manual_seed(args.seed))
    image_grid(images, args.columns or min(args.n, 8)).save(args.out)
    print(f"wrote {args.n} samples at temperature {args.temperature} (seed {args.seed}) to {args.out}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    from .fileio import save_safetensors
    from .imaging import celeba_crop, load_image, to_tensor
    from .train import load_model

    model = load_model(args.model, args.device)
    size = model.config.image_size
    crop = celeba_crop if args.crop == "celeba" else (lambda img, s: img.resize((s, s)))
    x = torch.stack([to_tensor(crop(load_image(p), size)) for p in args.images])
    with torch.no_grad():
        flat = model.flatten_latents(model.encode(x, standardized=args.standardized))
    names = [Path(p).name for p in args.images]
    save_safetensors({"latents": flat}, args.out,
                     metadata={"files": json.dumps(names), "standardized": str(args.standardized).lower()})
    print(f"encoded {len(names)} images to {args.out} ({flat.shape[1]} values each)")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError, safe_open

    from .imaging import to_pil
    from .train import load_model

    model = load_model(args.model, args.device)
    try:
        with safe_open(args.latents, framework="pt") as f:
            meta = f.metadata() or {}
            flat = f.get_tensor("latents")
    except SafetensorError as err:
        raise ValueError(f"cannot read latents from {args.latents}: {err}") from None
    names = json.loads(meta.get("files", "[]")) or [f"{i:04d}.png" for i in range(len(flat))]
    with torch.no_grad():
        images = model.decode(model.unflatten_latents(flat), standardized=meta.get("standardized") == "true")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, img in zip(names, images):
        to_pil(img).save(out / (Path(name).stem + ".png"))
    print(f"decoded {len(images)} images to {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from .train import export

    model = export(args.run, args.out, use_ema=not args.no_ema, half=args.fp16)
    print(f"exported {model.num_parameters() / 1e6:.2f}M parameters to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flow_model", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)

    p = sub.add_parser("eval", help="bits/dim (mean ± s.e.) over a folder or a run's split")
    p.add_argument("--model", required=True, help="pretrained directory or run directory")
    p.add_argument("--data", required=True)
    p.add_argument("--split", help="a run's split.json: evaluate only its --subset")
    p.add_argument("--subset", default="val", choices=("val", "train"))
    p.add_argument("--limit", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--importance-samples", type=_positive_int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("sample", help="a grid PNG of samples at one temperature")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=_positive_int, default=16)
    p.add_argument("--columns", type=_positive_int)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("encode", help="image files -> flat latents (safetensors)")
    p.add_argument("--model", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--crop", choices=("celeba", "none"), default="celeba",
                   help="celeba: the CelebA face square of an aligned image; none: resize the whole image")
    p.add_argument("--standardized", action="store_true", help="store standardised residuals instead of raw latents")
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("decode", help="flat latents (safetensors) -> PNG files")
    p.add_argument("--model", required=True)
    p.add_argument("--latents", required=True)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="cpu")

    p = sub.add_parser("export", help="run directory -> pretrained directory (config.json + model.safetensors)")
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-ema", action="store_true", help="export the raw weights even if the run kept an EMA")
    p.add_argument("--fp16", action="store_true", help="store the weights in float16")

    directions_command.add_parser(sub)
    ablation_command.add_parser(sub)
    return parser


COMMANDS = {"train": _train, "eval": _eval, "sample": _sample, "encode": _encode, "decode": _decode, "export": _export,
            "directions": directions_command.run,
            "ablation": ablation_command.run}


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    command = args.command
    del args.command
    try:
        return COMMANDS[command](args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

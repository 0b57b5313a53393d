"""`python -m flow_model eval`: bits/dim (mean ± s.e.) over a folder or a run's split."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="bits/dim (mean ± s.e.) over a folder or a run's split")
    p.add_argument("--model", required=True, help="pretrained directory or run directory")
    p.add_argument("--data", required=True)
    p.add_argument("--split", help="a run's split.json: evaluate only its --subset")
    p.add_argument("--subset", default="val", choices=("val", "train"))
    p.add_argument("--limit", type=positive_int, help="only the first N images of the folder in name order (before "
                   "--split picks its subset): a quick check, not a figure, since CelebA's files are not in random "
                   "order; use --sample for that")
    p.add_argument("--image-dirs", nargs="+", metavar="NAME", help="CelebA layout: only these img_align_celeba* "
                   "folders (e.g. the one the validation faces were drawn from, for a training-face figure that "
                   "compares with theirs)")
    p.add_argument("--sample", type=positive_int, metavar="N", help="a random N of the images (drawn with --seed, "
                   "after --split picks its subset)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--importance-samples", type=positive_int, default=1)
    p.add_argument("--uniform-noise", action="store_true", help="score the flow with uniform dequantisation noise "
                   "in place of a learned dequantiser (the model's flow alone, as a uniform-noise model reports)")
    p.add_argument("--terms", action="store_true", help="also split the bound into the flow's E_q[-log p(x + u)] "
                   "and the dequantiser's E_q[log q(u | x)] (one noise sample per image, the same as the figure's)")
    p.add_argument("--against", metavar="MODEL", help="also score this model on the same images with the same noise "
                   "and print the paired difference (--model minus it): a standard error far smaller than either "
                   "model's own, which is what tells two checkpoints of one run apart")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from ..data import load_images, open_dataset, random_subset, select
    from ..evaluate import bits_per_image, bound_terms_per_image, mean_and_se
    from ..training.checkpoint import load_model

    if args.terms and args.importance_samples > 1:
        raise ValueError("--terms splits a one-sample bound; drop --importance-samples")
    model = load_model(args.model, args.device)
    other = load_model(args.against, args.device) if args.against else None
    if other is not None and (other.config.image_size, other.config.n_bits) != (model.config.image_size,
                                                                                model.config.n_bits):
        raise ValueError(f"--against {args.against} models {other.config.image_size}x{other.config.image_size} "
                         f"{other.config.n_bits}-bit images, --model {model.config.image_size}x"
                         f"{model.config.image_size} {model.config.n_bits}-bit: nothing to pair")
    if args.uniform_noise:
        model = model.with_uniform_noise()
        other = other.with_uniform_noise() if other is not None else None
    data = open_dataset(args.data, limit=args.limit, image_dirs=args.image_dirs)
    if args.split:
        split = json.loads(Path(args.split).read_text())
        if not isinstance(split, dict) or args.subset not in split:
            raise ValueError(f"{args.split} has no {args.subset!r} list; pass the split.json of a run")
        names = split[args.subset]
        if args.image_dirs:
            names = [n for n in names if n.split("/", 1)[0] in args.image_dirs]
        data = select(data, names)
    if args.sample:
        data = random_subset(data, args.sample, args.seed)
    images, used = load_images(data, model.config.image_size, None, args.workers)

    def score(m):
        return bits_per_image(m, images, args.batch_size, args.seed, args.importance_samples, progress=True)

    bits = score(model)
    mean, se = mean_and_se(bits)
    c = model.config
    print(f"{mean:.4f} ± {se:.4f} bits/dim (mean ± s.e., {len(used)} images, {c.n_bits}-bit, "
          f"{c.image_size}x{c.image_size}, dequant={c.dequant}, importance samples={args.importance_samples})")
    if args.terms:
        flow, q = (mean_and_se(v) for v in bound_terms_per_image(model, images, args.batch_size, args.seed))
        print(f"flow E_q[-log p(x + u)] {flow[0]:.4f} ± {flow[1]:.4f}, dequantiser E_q[log q(u | x)] "
              f"{q[0]:.4f} ± {q[1]:.4f} bits/dim")
    if other is not None:
        other_bits = score(other)
        (o_mean, o_se), (d_mean, d_se) = mean_and_se(other_bits), mean_and_se(bits - other_bits)
        print(f"--against {args.against}: {o_mean:.4f} ± {o_se:.4f} bits/dim; paired difference (--model minus it) "
              f"{d_mean:+.4f} ± {d_se:.4f} bits/dim over the same images and noise")
    return 0

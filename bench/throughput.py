"""Training images/s and single-image decode latency of the reference 64x64 Glow on this machine's CPU.

    python bench/throughput.py [--steps 8] [--decodes 30] [--batch-size 16] [--no-channels-last]
    python bench/throughput.py --depth 32 --hidden 64      # another shape; the issue's targets are for the default

Training is forward + backward + Adam step on a fixed batch (real CelebA faces when ../shared has them, else uint8
noise), after ActNorm initialisation on that batch. Decode is `Glow.decode` of one image's latents in eval mode under
inference_mode (the frozen inverse; the first, untimed decode builds it). Figures are medians over the timed repeats;
warm-up repeats are not timed.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

from flow_model.commands import positive_int
from flow_model.config import GlowConfig
from flow_model.data import load_images, open_dataset
from flow_model.glow import Glow, reduce_bits

CELEBA = ROOT.parent / "shared" / "data" / "celeba"
CONFIG = GlowConfig(image_size=64, n_bits=5, levels=3, depth=16, hidden=128, coupling="affine", permutation="lu")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=positive_int, default=8, help="timed training steps")
    p.add_argument("--decodes", type=positive_int, default=30, help="timed single-image decodes")
    p.add_argument("--warmup", type=positive_int, default=2, help="untimed repeats before each measurement")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--threads", type=positive_int, default=min(2, os.cpu_count() or 1), help="torch intra-op threads")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="activations in channels_last inside the flow (the library's default)")
    p.add_argument("--fused-adam", action=argparse.BooleanOptionalAction, default=True,
                   help="Adam's fused CPU kernel instead of its per-parameter loop")
    p.add_argument("--data", type=Path, default=CELEBA, help="CelebA-layout folder; uint8 noise when it is missing")
    shape = p.add_argument_group("model shape (defaults: the reference model)")
    shape.add_argument("--levels", type=positive_int, default=CONFIG.levels)
    shape.add_argument("--depth", type=positive_int, default=CONFIG.depth)
    shape.add_argument("--hidden", type=positive_int, default=CONFIG.hidden)
    shape.add_argument("--coupling", choices=("affine", "additive", "mixlogistic"), default=CONFIG.coupling)
    return p.parse_args(argv)


def load_batch(data: Path, n: int, image_size: int) -> tuple[torch.Tensor, str]:
    """n uint8 faces from `data`, or uniform uint8 noise when there is no dataset to read."""
    if not data.is_dir():
        noise = torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(0))
        return noise, "uint8 noise"
    images, _ = load_images(open_dataset(data, limit=n), image_size, workers=0, progress=False)
    if len(images) < n:
        raise ValueError(f"only {len(images)} of the first {n} images in {data} could be read")
    return images, f"{n} faces from {data}"


def timed(fn, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = dataclasses.replace(CONFIG, levels=args.levels, depth=args.depth, hidden=args.hidden,
                                 coupling=args.coupling)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images, source = load_batch(args.data, args.batch_size, config.image_size)

    model = Glow(config, seed=0)
    model.memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.train()
    model.initialize(images)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=args.fused_adam)
    noise = torch.Generator().manual_seed(1)

    def train_step() -> None:
        loss = model(images, generator=noise).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    print(f"torch {torch.__version__} | python {platform.python_version()} | {torch.get_num_threads()} threads | "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()} | mkldnn {torch.backends.mkldnn.is_available()}")
    print(f"config: {config.to_dict()} ({model.num_parameters() / 1e6:.2f}M parameters)")
    print(f"data: {source} | batch {args.batch_size} | channels_last {args.channels_last} | "
          f"fused Adam {args.fused_adam}")

    step_times = timed(train_step, args.steps, args.warmup)
    median_step = statistics.median(step_times)
    print(f"training: {args.batch_size / median_step:.1f} img/s median, {args.batch_size / min(step_times):.1f} best "
          f"({median_step * 1000:.0f} ms/step median over {args.steps} steps)")

    model.eval()
    one = images[:1]
    with torch.inference_mode():
        latents = model.encode(one)
        roundtrip = model.decode(latents)
        decode_times = timed(lambda: model.decode(latents), args.decodes, args.warmup)
    if not torch.equal(roundtrip, reduce_bits(one, config.n_bits)):
        raise RuntimeError("decode(encode(x)) != reduce_bits(x): the timed decode is wrong")
    print(f"decode (1 image): {statistics.median(decode_times) * 1000:.1f} ms median, "
          f"{percentile(decode_times, 0.95) * 1000:.1f} ms p95, {min(decode_times) * 1000:.1f} ms best "
          f"over {args.decodes} decodes")


if __name__ == "__main__":
    main()

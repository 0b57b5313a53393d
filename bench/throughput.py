"""Training images/s and single-image decode latency of the reference 64x64 Glow on this machine's CPU.

    python bench/throughput.py [--steps 8] [--decodes 30] [--batch-size 16] [--no-channels-last]
    python bench/throughput.py --depth 32 --hidden 64      # another shape; the issue's targets are for the default
    python bench/throughput.py --precision                 # fp32 and bf16 coupling nets, alternating step by step

Training is forward + backward + Adam step on a fixed batch (real CelebA faces when ../shared has them, else uint8
noise), after ActNorm initialisation on that batch. Decode is `Glow.decode` of one image's latents in eval mode under
inference_mode (the frozen inverse; the first, untimed decode builds it). Figures are medians over the timed repeats;
warm-up repeats are not timed. `--precision bf16` runs the coupling nets under bf16 autocast, as `train --precision
bf16` does; `--precision` alone (= both) alternates fp32 and bf16 steps on the same model, so both see the same
machine load, and reports the two side by side.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import time
from pathlib import Path

import flow_model  # noqa: F401  (first: sets OpenMP's wait policy before torch loads)
import torch

ROOT = Path(__file__).resolve().parents[1]

from flow_model.commands import positive_int
from flow_model.config import GlowConfig
from flow_model.data import load_images, open_dataset
from flow_model.device import cpu_has_native_bf16
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
    p.add_argument("--precision", nargs="?", choices=("fp32", "bf16", "both"), default="fp32", const="both",
                   help="coupling nets in fp32, in bf16 autocast, or both (alternating steps; the default when the "
                   "flag is given without a value)")
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


def timed_alternating(fns: dict[str, object], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Like timed, for several functions called in turn each repeat, so a change in machine load hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
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

    def train_step(dtype: torch.dtype | None = None) -> None:
        model.set_coupling_precision(dtype)
        loss = model(images, generator=noise).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    print(f"torch {torch.__version__} | python {platform.python_version()} | {torch.get_num_threads()} threads | "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()} | mkldnn {torch.backends.mkldnn.is_available()}")
    print(f"config: {config.to_dict()} ({model.num_parameters() / 1e6:.2f}M parameters)")
    print(f"data: {source} | batch {args.batch_size} | channels_last {args.channels_last} | "
          f"fused Adam {args.fused_adam}")

    dtypes = {"fp32": None, "bf16": torch.bfloat16}
    names = list(dtypes) if args.precision == "both" else [args.precision]
    if "bf16" in names:
        print(f"bf16: coupling nets under CPU autocast; native bf16 on this CPU: {cpu_has_native_bf16()} "
              "(avx512_bf16/amx_bf16; without it bf16 is emulated)")
    step_times = timed_alternating({n: (lambda d=dtypes[n]: train_step(d)) for n in names}, args.steps, args.warmup)
    model.set_coupling_precision(None)
    rates = {}
    for name in names:
        median_step = statistics.median(step_times[name])
        rates[name] = args.batch_size / median_step
        print(f"training{' ' + name if len(names) > 1 or name != 'fp32' else ''}: {rates[name]:.1f} img/s median, "
              f"{args.batch_size / min(step_times[name]):.1f} best "
              f"({median_step * 1000:.0f} ms/step median over {args.steps} steps)")
    if len(names) > 1:
        print(f"training img/s, steps alternating: fp32 {rates['fp32']:.1f} | bf16 {rates['bf16']:.1f} | "
              f"bf16/fp32 {rates['bf16'] / rates['fp32']:.2f}x")

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

"""The least time a training step of the reference Glow can take on this machine with PyTorch's own kernels.

    python bench/kernel_floor.py [--batch-size 16] [--threads 2] [--repeats 20]

Times, one kind at a time and with hot caches, forward + backward of every convolution and matrix product that a
training step of the reference model (64x64, 3 levels x 16 steps, hidden 128, affine, LU) runs: per step of flow the
coupling net's conv3x3 -> conv1x1 -> conv3x3 and the invertible 1x1 conv, per level the split prior's conv. Their sum
is a floor for the step: the real step adds every elementwise op, the optimiser and cache misses between layers, so
no implementation that keeps these kernels (oneDNN convolutions, MKL GEMMs) trains faster than the img/s printed.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.throughput import CONFIG, _positive_int  # noqa: E402


def time_fwd_bwd(fn, inputs: list[torch.Tensor], repeats: int) -> float:
    """Median seconds of fn(*inputs) and its backward, every input requiring a gradient."""
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    grad = torch.randn_like(fn(*inputs))
    times = []
    for i in range(repeats + 3):
        start = time.perf_counter()
        fn(*inputs).backward(grad)
        if i >= 3:
            times.append(time.perf_counter() - start)
        for t in inputs:
            t.grad = None
    return statistics.median(times)


def conv3x3(batch: int, cin: int, cout: int, size: int, repeats: int) -> float:
    cl = torch.channels_last
    x = torch.randn(batch, cin, size, size).contiguous(memory_format=cl)
    w, b = torch.randn(cout, cin, 3, 3) * 0.05, torch.zeros(cout)
    return time_fwd_bwd(lambda x, w, b: F.conv2d(x, w, b, padding=1), [x, w, b], repeats)


def linear(rows: int, cin: int, cout: int, repeats: int, bias: bool = True) -> float:
    x, w = torch.randn(rows, cin), torch.randn(cout, cin) * 0.05
    if bias:
        return time_fwd_bwd(lambda x, w, b: F.linear(x, w, b), [x, w, torch.zeros(cout)], repeats)
    return time_fwd_bwd(lambda x, w: F.linear(x, w), [x, w], repeats)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=_positive_int, default=16)
    p.add_argument("--threads", type=_positive_int, default=2)
    p.add_argument("--repeats", type=_positive_int, default=20)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    c, size, hidden, n, r = CONFIG.in_channels * 4, CONFIG.image_size // 2, CONFIG.hidden, args.batch_size, args.repeats
    total = 0.0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {n}; forward + backward, ms")
    for level in range(CONFIG.levels):
        half = c // 2
        parts = {
            f"conv3x3 {half}->{hidden}": conv3x3(n, half, hidden, size, r),
            f"conv1x1 {hidden}->{hidden}": linear(n * size * size, hidden, hidden, r),
            f"conv3x3 {hidden}->{c}": conv3x3(n, hidden, c, size, r),
            f"invertible 1x1 {c}->{c}": linear(n * size * size, c, c, r, bias=False),
        }
        per_step = sum(parts.values())
        prior = conv3x3(n, half, c, size, r) if level < CONFIG.levels - 1 else 0.0
        level_total = CONFIG.depth * per_step + prior
        total += level_total
        detail = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in parts.items())
        print(f"level {level} ({c} channels, {size}x{size}): {detail}; x{CONFIG.depth} steps + prior "
              f"{prior * 1e3:.2f} = {level_total * 1e3:.0f} ms")
        c, size = half * 4, size // 2
    print(f"floor: {total * 1e3:.0f} ms per step of {n} images, at most {n / total:.1f} img/s")


if __name__ == "__main__":
    main()

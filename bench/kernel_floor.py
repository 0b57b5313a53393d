"""The least time a training step of the reference Glow can take on this machine with PyTorch's own kernels.

    python -m bench.kernel_floor [--batch-size 16] [--threads 2] [--repeats 20] [--depth 16 --hidden 128 ...]

Lists every convolution and matrix product that a training step runs (read off the model: per step of flow the
coupling net's conv3x3 -> conv1x1 -> conv3x3 and the invertible 1x1 conv, per split its prior's conv), times each
distinct one, forward + backward, on its own with hot caches, and adds them up. The real step adds every
elementwise op, the optimiser and the cache misses between layers, so no implementation that keeps these kernels
(oneDNN convolutions, MKL GEMMs) trains faster than the img/s printed.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections import Counter

import flow_model  # noqa: F401  (first: sets OpenMP's wait policy before torch loads)
import torch
import torch.nn.functional as F

from bench.throughput import CONFIG
from flow_model.commands import positive_int
from flow_model.glow import Glow
from flow_model.layers import ConvNet, InvertibleConv


@dataclasses.dataclass(frozen=True)
class Kernel:
    """One convolution or GEMM of the model: `size` x `size` activations, weight (cout, cin, k, k)."""

    name: str
    cin: int
    cout: int
    kernel: int
    size: int
    bias: bool


def model_kernels(model: Glow) -> Counter[Kernel]:
    """Every convolution and matrix product of a training step, with how often it runs."""
    found: Counter[Kernel] = Counter()
    size = model.config.image_size
    for level in model.levels:
        size //= 2
        for module in level.modules():
            if isinstance(module, ConvNet):
                for name, conv in (("conv3x3", module.conv1), ("conv1x1", module.conv2), ("conv3x3", module.out.conv)):
                    cout, cin, k, _ = conv.weight.shape
                    found[Kernel(name, cin, cout, k, size, True)] += 1
            elif isinstance(module, InvertibleConv):
                c = module.inverse_weight().shape[0]
                found[Kernel("invertible 1x1", c, c, 1, size, False)] += 1
        if level.split is not None:
            cout, cin, k, _ = level.split.prior.conv.weight.shape
            found[Kernel("split prior conv3x3", cin, cout, k, size, True)] += 1
    return found


def time_fwd_bwd(kernel: Kernel, batch: int, repeats: int) -> float:
    """Median seconds of the kernel's forward and backward (input, weight and bias gradients), channels_last."""
    x = torch.randn(batch, kernel.cin, kernel.size, kernel.size).contiguous(memory_format=torch.channels_last)
    w = torch.randn(kernel.cout, kernel.cin, kernel.kernel, kernel.kernel) * 0.05
    inputs = [x, w] + ([torch.zeros(kernel.cout)] if kernel.bias else [])
    inputs = [t.requires_grad_(True) for t in inputs]
    if kernel.kernel == 1:  # the library runs 1x1 convs as one GEMM over the pixels (layers/conv.py)
        def fn(x, w, b=None):
            return F.linear(x.permute(0, 2, 3, 1), w.reshape(w.shape[0], -1), b)
    else:
        def fn(x, w, b=None):
            return F.conv2d(x, w, b, padding=kernel.kernel // 2)
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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--repeats", type=positive_int, default=20)
    shape = p.add_argument_group("model shape (defaults: the reference model)")
    for field in ("levels", "depth", "hidden"):
        shape.add_argument(f"--{field}", type=positive_int, default=getattr(CONFIG, field))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = dataclasses.replace(CONFIG, levels=args.levels, depth=args.depth, hidden=args.hidden)
    kernels = model_kernels(Glow(config))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}; "
          f"{sum(kernels.values())} kernels of {len(kernels)} kinds, forward + backward each")
    total = 0.0
    for kernel, count in kernels.items():
        seconds = time_fwd_bwd(kernel, args.batch_size, args.repeats)
        total += count * seconds
        print(f"  {kernel.name} {kernel.cin}->{kernel.cout} at {kernel.size}x{kernel.size}: "
              f"{seconds * 1e3:.2f} ms x {count} = {count * seconds * 1e3:.0f} ms")
    print(f"floor: {total * 1e3:.0f} ms per step of {args.batch_size} images, at most "
          f"{args.batch_size / total:.1f} img/s")


if __name__ == "__main__":
    main()

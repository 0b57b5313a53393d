"""The benchmarks measure what they say: the kernel floor covers every convolution and GEMM of the model."""
from __future__ import annotations

import re

from tests.conftest import tiny_config
from torch import nn

from bench import kernel_floor
from flow_model.glow import Glow
from flow_model.layers import InvertibleConv


def test_kernel_floor_lists_every_convolution_and_gemm_of_the_model_at_its_size():
    model = Glow(tiny_config(image_size=16, levels=3, depth=2, hidden=8))
    kernels = kernel_floor.model_kernels(model)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    mixes = [m for m in model.modules() if isinstance(m, InvertibleConv)]
    assert sum(kernels.values()) == len(convs) + len(mixes)
    assert sorted((k.cout, k.cin, k.kernel) for k in kernels.elements() if k.name != "invertible 1x1") == sorted(
        tuple(c.weight.shape[:3]) for c in convs)
    first = [k for k in kernels if k.name == "conv3x3" and k.cin == 6]  # level 0: 12 channels after the squeeze
    assert [(k.cout, k.size) for k in first] == [(8, 8)] and kernels[first[0]] == 2


def test_kernel_floor_runs_and_prints_a_finite_floor(capsys):
    kernel_floor.main(["--levels", "2", "--depth", "1", "--hidden", "8", "--batch-size", "2", "--repeats", "1",
                       "--threads", "1"])
    out = capsys.readouterr().out
    floor = re.search(r"floor: (\d+) ms per step of 2 images, at most ([\d.]+) img/s", out)
    assert floor and float(floor.group(2)) > 0
    assert "conv3x3 6->128" not in out and "conv3x3 6->8 at 32x32" in out

"""Device names as the command lines take them (auto, cpu, cuda, cuda:N) -> torch devices."""
from __future__ import annotations

import torch


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but no CUDA device is available")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device("cpu")



PRECISIONS = ("fp32", "bf16", "auto")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU feature flags named in /proc/cpuinfo text (read from the file when not given; empty where absent)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return flags


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); elsewhere bf16 autocast is emulated."""
    return bool(cpu_flags(cpuinfo) & set(BF16_CPU_FLAGS))


def resolve_precision(precision: str, device: torch.device, cpuinfo: str | None = None) -> str:
    """--precision -> "fp32" or "bf16": `auto` takes bf16 only where the hardware has it natively (on CUDA,
    torch.cuda.is_bf16_supported(); on CPU, avx512_bf16 or amx_bf16 among the cpuinfo flags)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported()
    elif device.type == "cpu":
        native = cpu_has_native_bf16(cpuinfo)
    else:
        native = False
    return "bf16" if native else "fp32"

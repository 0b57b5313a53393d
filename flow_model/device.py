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


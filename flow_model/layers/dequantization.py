"""Dequantisation: how discrete pixel bins become a continuous x for the flow."""
from __future__ import annotations

import torch
from torch import nn


class UniformDequantizer(nn.Module):
    """u ~ U[0,1)^D with log q(u|x) = 0: the plain Glow/RealNVP bound."""

    def forward(self, bins: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        u = torch.rand(bins.shape, generator=generator, device=bins.device, dtype=bins.dtype)
        return u, bins.new_zeros(bins.shape[0])

    def centre(self, bins: torch.Tensor) -> torch.Tensor:
        """The noise an image is encoded at: the middle of each bin."""
        return torch.full_like(bins, 0.5)

"""Multi-scale pieces (RealNVP/Glow): squeeze, split with a learned conditional prior, and the top prior."""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import FlowLayer
from .conv import is_channels_last
from .nets import ZeroConv2d

LOG_2PI = math.log(2 * math.pi)


def squeeze2d(x: torch.Tensor) -> torch.Tensor:
    """Channel c of the input becomes channels 4c..4c+3 (row-major 2x2 block); keeps a channels_last input so."""
    b, c, h, w = x.shape
    if is_channels_last(x):
        x = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, h // 2, w // 2, c * 4).permute(0, 3, 1, 2)
    x = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * 4, h // 2, w // 2)


def unsqueeze2d(x: torch.Tensor) -> torch.Tensor:
    b, c, h, w = x.shape
    if is_channels_last(x):
        x = x.permute(0, 2, 3, 1).reshape(b, h, w, c // 4, 2, 2).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, h * 2, w * 2, c // 4).permute(0, 3, 1, 2)
    x = x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // 4, h * 2, w * 2)


class Squeeze(FlowLayer):
    """2x2 space-to-depth: trades resolution for channels so couplings can mix neighbouring pixels."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"squeeze needs even height and width, got {tuple(x.shape[2:])}")
        return squeeze2d(x), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return unsqueeze2d(y)


def gaussian_log_prob(eps: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, std) per sample, given the standardised residual eps = (z - mean) / std."""
    # Channels moved last first: the backward of a sum broadcasts its gradient, and elementwise ops on broadcast
    # gradients allocate NCHW results, which would turn the whole backward pass away from channels_last.
    eps, log_std = eps.movedim(1, -1), log_std.expand_as(eps).movedim(1, -1)
    return (-0.5 * (LOG_2PI + eps**2) - log_std).flatten(1).sum(1)


class Split(nn.Module):
    """Factors out half the channels; their Gaussian's mean and log-std come from a zero-initialised conv on the rest."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.out_channels = channels // 2
        self.keep_channels = channels - self.out_channels
        self.prior = ZeroConv2d(self.keep_channels, 2 * self.out_channels)

    def split(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return h.split([self.keep_channels, self.out_channels], dim=1)  # one op: see coupling.halves

    def merge(self, kept: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([kept, z], dim=1)

    def prior_params(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.prior(kept).chunk(2, dim=1)
        return mean, log_std


class TopPrior(nn.Module):
    """A learned diagonal Gaussian over the last level, one mean and log-std per latent position."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, *shape))
        self.log_std = nn.Parameter(torch.zeros(1, *shape))

    def prior_params(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean.expand(batch, -1, -1, -1), self.log_std.expand(batch, -1, -1, -1)

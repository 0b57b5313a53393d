"""Conditioning networks: the non-invertible nets inside couplings and priors."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .actnorm import ActNorm


class ZeroConv2d(nn.Module):
    """3x3 (or 1x1) conv that starts at zero, with a learned per-channel log-scale, so a new step is the identity."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, logscale_factor: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.log_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.logscale_factor = logscale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.exp(self.log_scale * self.logscale_factor)


class ConvNet(nn.Module):
    """Glow's coupling net: conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU -> zero-initialised conv3x3."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.norm1 = ActNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.norm2 = ActNorm(hidden)
        self.out = ZeroConv2d(hidden, out_channels)
        nn.init.normal_(self.conv1.weight, std=0.05)
        nn.init.normal_(self.conv2.weight, std=0.05)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1.normalize(self.conv1(x)))
        h = F.relu(self.norm2.normalize(self.conv2(h)))
        return self.out(h)


def make_cond_net(config, in_channels: int, out_channels: int) -> nn.Module:
    """Build the conditioning net named by `config.cond_net`; every coupling gets its net from here."""
    if config.cond_net == "conv":
        return ConvNet(in_channels, out_channels, config.hidden)
    if config.cond_net == "attention":
        from .attention import AttentionNet

        return AttentionNet(in_channels, out_channels, config)
    raise ValueError(f"unknown cond_net {config.cond_net!r}")

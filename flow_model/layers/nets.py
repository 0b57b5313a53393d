"""Conditioning networks: the non-invertible nets inside couplings and priors."""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .actnorm import ActNorm
from .base import EvalCache, tensors_of
from .conv import conv1x1, is_channels_last


class ZeroConv2d(nn.Module):
    """3x3 (or 1x1) conv that starts at zero, with a learned per-channel log-scale, so a new step is the identity."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, logscale_factor: float = 3.0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.conv.weight.data.zero_()
        self.conv.bias.data.zero_()
        self.log_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.logscale_factor = logscale_factor

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the plain conv equal to conv(x) * exp(log_scale * factor): one op instead of three."""
        scale = torch.exp(self.log_scale * self.logscale_factor).reshape(-1)
        return self.conv.weight * scale.view(-1, 1, 1, 1), self.conv.bias * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.folded()
        return F.conv2d(x, weight, bias, padding=self.conv.padding)


class ConvNet(nn.Module):
    """Glow's coupling net: conv3x3 -> ActNorm -> ReLU -> conv1x1 -> ActNorm -> ReLU -> zero-initialised conv3x3,
    with `dropout` on the last hidden layer in training (Flow++ regularises its coupling nets so).

    Once its ActNorms are initialised it runs as three biased convs with each ActNorm folded into the conv before
    it; in inference (eval mode, autograd off) the folded weights are computed once and reused, and `frozen` binds
    them to a plain function for Glow's decoding.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False)
        self.norm1 = ActNorm(hidden)
        self.conv2 = nn.Conv2d(hidden, hidden, 1, bias=False)
        self.norm2 = ActNorm(hidden)
        self.out = ZeroConv2d(hidden, out_channels)
        nn.init.normal_(self.conv1.weight, std=0.05)
        nn.init.normal_(self.conv2.weight, std=0.05)
        self._cache = EvalCache()

    def _folded(self, memory_format: torch.memory_format | None = None) -> tuple[torch.Tensor, ...]:
        w1, b1, w2, b2, w3, b3 = (*self.norm1.fold(self.conv1.weight), *self.norm2.fold(self.conv2.weight),
                                  *self.out.folded())
        if memory_format is not None:
            w1, w3 = w1.contiguous(memory_format=memory_format), w3.contiguous(memory_format=memory_format)
        return w1, b1, w2, b2, w3, b3

    def _initialized(self) -> bool:
        return bool(self.norm1.initialized and self.norm2.initialized)

    def _weights(self, x: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """The folded weights, or None while the ActNorms still wait for their data-dependent initialisation."""
        if self.training or torch.is_grad_enabled():
            return self._folded() if self._initialized() else None
        # Weights in the input's layout: a conv whose weight layout differs reorders the weight on every call.
        layout = torch.channels_last if is_channels_last(x) else torch.contiguous_format
        tensors = tensors_of(self)  # the ActNorms' init flags included: a cache hit implies initialised nets
        weights = self._cache.lookup(tensors, layout)
        if weights is None and self._initialized():
            weights = self._cache.get(tensors, partial(self._folded, layout), layout)
        return weights

    def frozen(self, memory_format: torch.memory_format) -> Callable[[torch.Tensor], torch.Tensor]:
        """This net as a function of x alone, its folded weights computed now (once initialised)."""
        if not self._initialized():
            return self
        with torch.no_grad():
            return partial(self._run, self._folded(memory_format))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = self._weights(x)
        if weights is None:  # data-dependent init sees the raw conv outputs
            h = F.relu(self.norm1.normalize(self.conv1(x)))
            h = F.relu(self.norm2.normalize(self.conv2(h)))
            return self.out(self._drop(h))
        return self._run(weights, x)

    def _drop(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, self.dropout, training=True) if self.dropout and self.training else h

    def _run(self, weights: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2, w3, b3 = weights
        inplace = not torch.is_grad_enabled()  # with autograd on, ReLU on conv1x1's permuted view must not be in place
        h = F.relu(F.conv2d(x, w1, b1, padding=1), inplace=inplace)
        h = F.relu(conv1x1(h, w2, b2), inplace=inplace)
        return F.conv2d(self._drop(h), w3, b3, padding=1)


def make_cond_net(config, in_channels: int, out_channels: int) -> nn.Module:
    """Build the conditioning net named by `config.cond_net`; every coupling gets its net from here."""
    if config.cond_net == "conv":
        return ConvNet(in_channels, out_channels, config.hidden, config.dropout)
    if config.cond_net == "attention":
        from .attention import AttentionNet

        return AttentionNet(in_channels, out_channels, config)
    raise ValueError(f"unknown cond_net {config.cond_net!r}")

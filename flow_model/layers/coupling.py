"""Coupling layers (Glow section 3.3): half the channels condition an invertible map of the other half."""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .base import FlowLayer


def halves(x: torch.Tensor, split: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Channels [:split] and [split:]. One split op rather than two slices: the backward of a slice allocates a
    zero-filled tensor of the whole input (in NCHW, whatever the input's layout) and the two then get added."""
    return x.split([split, x.shape[1] - split], dim=1)


def frozen_net(net: nn.Module, memory_format: torch.memory_format) -> Callable[[torch.Tensor], torch.Tensor]:
    """A coupling net as a function with its weights derived once, where the net offers that (ConvNet does)."""
    freeze = getattr(net, "frozen", None)
    return net if freeze is None else freeze(memory_format)


def net_input(xa: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """What a coupling net sees: the conditioning half, plus context channels in a conditional flow."""
    return xa if context is None else torch.cat([xa, context], dim=1)


class NetPrecision:
    """Mixed precision of a coupling's net, a runtime setting (not state: no parameter, buffer or state-dict key).

    `net_dtype` (set by `Glow.set_coupling_precision`) makes the training forward run the net under autocast in
    that dtype and hand its output back in the input's dtype, so everything the coupling computes from it (the
    transform, its log-determinant) stays float32. Eval-mode forwards and every inverse ignore it.
    """

    net_dtype: torch.dtype | None = None
    training: bool

    def _net_forward(self, inp: torch.Tensor) -> torch.Tensor:
        dtype = self.net_dtype if self.training else None
        if dtype is None:
            return self.net(inp)
        with torch.autocast(inp.device.type, dtype=dtype):
            out = self.net(inp)
        return out.to(inp.dtype)


class AffineCoupling(NetPrecision, FlowLayer):
    """y_b = (x_b + shift) * sigmoid(raw + 2); the +2 starts scales near 0.88, which keeps early training stable."""

    def __init__(self, channels: int, make_net) -> None:
        super().__init__()
        self.split = channels // 2
        self.net: nn.Module = make_net(self.split, 2 * (channels - self.split))

    def _shift_scale(self, xa: torch.Tensor, context: torch.Tensor | None,
                     net: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        shift, raw = (self.net if net is None else net)(net_input(xa, context)).chunk(2, dim=1)
        return shift, raw + 2.0

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = halves(x, self.split)
        shift, raw = self._shift_scale(xa, context, self._net_forward)
        yb = (xb + shift) * torch.sigmoid(raw)
        # Channels last before the sum, so its broadcast gradient comes back channels_last (see gaussian_log_prob).
        logdet = F.logsigmoid(raw.movedim(1, -1)).flatten(1).sum(1)
        return torch.cat([xa, yb], dim=1), logdet

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self._invert(y, context)

    def frozen_inverse(self, memory_format: torch.memory_format) -> Callable[[torch.Tensor], torch.Tensor]:
        return partial(self._invert, net=frozen_net(self.net, memory_format))

    def _invert(self, y: torch.Tensor, context: torch.Tensor | None = None, net: Callable | None = None) -> torch.Tensor:
        ya, yb = halves(y, self.split)
        shift, raw = self._shift_scale(ya, context, net)
        return torch.cat([ya, yb / torch.sigmoid(raw) - shift], dim=1)


class AdditiveCoupling(NetPrecision, FlowLayer):
    """y_b = x_b + t(x_a) (NICE): volume preserving."""

    def __init__(self, channels: int, make_net) -> None:
        super().__init__()
        self.split = channels // 2
        self.net: nn.Module = make_net(self.split, channels - self.split)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = halves(x, self.split)
        return torch.cat([xa, xb + self._net_forward(net_input(xa, context))], dim=1), x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        return self._invert(y, context)

    def frozen_inverse(self, memory_format: torch.memory_format) -> Callable[[torch.Tensor], torch.Tensor]:
        return partial(self._invert, net=frozen_net(self.net, memory_format))

    def _invert(self, y: torch.Tensor, context: torch.Tensor | None = None, net: Callable | None = None) -> torch.Tensor:
        ya, yb = halves(y, self.split)
        return torch.cat([ya, yb - (self.net if net is None else net)(net_input(ya, context))], dim=1)


def make_coupling(config, channels: int, make_net: Callable[[int, int], nn.Module]) -> FlowLayer:
    """The coupling `config.coupling` names (affine, additive or mixlogistic), its nets made by make_net(in, out):
    the one place a coupling is chosen, for the flow's steps and the variational dequantiser's alike."""
    if config.coupling == "affine":
        return AffineCoupling(channels, make_net)
    if config.coupling == "additive":
        return AdditiveCoupling(channels, make_net)
    from .mixture import MixLogisticCoupling  # deferred: mixture.py imports net_input from here

    return MixLogisticCoupling(channels, make_net, components=config.mixture_components)

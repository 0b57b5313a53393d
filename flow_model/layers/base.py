"""The one protocol every invertible layer follows, and the sequence that composes them."""
from __future__ import annotations

import torch
from torch import nn


class FlowLayer(nn.Module):
    """An invertible map: `forward(x) -> (y, logdet)` with logdet per sample, `inverse(y) -> x`."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - protocol
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        raise NotImplementedError


class EvalCache:
    """Tensors derived from parameters, computed once for inference; invalid as soon as a parameter moves or changes."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value = None

    def get(self, params: list[torch.Tensor], compute, tag=None):
        """`compute()`, recomputed only when a parameter or `tag` (anything else the value depends on) changed."""
        key = (tag, *((p.data_ptr(), p._version, p.dtype) for p in params))
        if key != self.key:
            with torch.no_grad():
                self.value = compute()
            self.key = key
        return self.value


class FlowSequential(FlowLayer):
    """Composition: log-determinants add, inverses run in reverse order."""

    def __init__(self, *layers: FlowLayer) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_logdet = layer(x)
            logdet = logdet + layer_logdet
        return x, logdet

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y

"""The one protocol every invertible layer follows, and the sequence that composes them."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class FlowLayer(nn.Module):
    """An invertible map: `forward(x) -> (y, logdet)` with logdet per sample, `inverse(y) -> x`."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - protocol
        raise NotImplementedError

    def inverse(self, y: torch.Tensor) -> torch.Tensor:  # pragma: no cover - protocol
        raise NotImplementedError

    def frozen_inverse(self, memory_format: torch.memory_format) -> Callable[[torch.Tensor], torch.Tensor]:
        """`inverse` as a function of y alone, with whatever it derives from the parameters computed now, for
        inputs in `memory_format`. Valid while the parameters stay as they are (Glow drops it when one changes).
        Decoding is a long chain of small ops, so per-call bookkeeping shows; by default the plain inverse."""
        return self.inverse


def tensors_of(*modules: nn.Module) -> list[torch.Tensor]:
    """Every parameter and buffer of `modules` and their submodules, read straight from the module dicts: a tenth of
    the cost of `parameters()`, on a path that decoding takes once per layer."""
    found, stack = [], list(modules)
    while stack:
        module = stack.pop()
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None:
                found.append(tensor)
        stack.extend(module._modules.values())
    return found


class EvalCache:
    """Tensors derived from parameters, computed once for inference; invalid as soon as a tensor it was computed from
    moves or changes in place (its storage or version counter differ), so edits, loads and optimiser steps are seen."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value = None

    @staticmethod
    def _key(tensors, tag) -> tuple:
        return tag, [(t.data_ptr(), t._version, t.dtype) for t in tensors]

    def lookup(self, tensors, tag=None):
        """The cached value if none of `tensors` (nor `tag`, anything else it depends on) changed, else None."""
        return self.value if self._key(tensors, tag) == self.key else None

    def get(self, tensors, compute, tag=None):
        """`compute()`, recomputed only when one of `tensors` or `tag` changed."""
        key = self._key(tensors, tag)
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

    def frozen_inverse(self, memory_format: torch.memory_format) -> Callable[[torch.Tensor], torch.Tensor]:
        inverses = [layer.frozen_inverse(memory_format) for layer in reversed(self.layers)]

        def inverse(y: torch.Tensor) -> torch.Tensor:
            for layer_inverse in inverses:
                y = layer_inverse(y)
            return y

        return inverse

"""Channel mixing between couplings: invertible 1x1 convolutions (Glow section 3.2) and fixed permutations."""
from __future__ import annotations

import torch
from torch import nn

from .base import EvalCache, FlowLayer, tensors_of
from .conv import conv1x1


def random_rotation(channels: int, generator: torch.Generator | None = None) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator, dtype=torch.float64))
    return q.float()


class InvertibleConv(FlowLayer):
    """Shared 1x1-convolution mechanics; subclasses say how W and log|det W| come from their parameters."""

    def __init__(self) -> None:
        super().__init__()
        self._cache = EvalCache()

    def _weight(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _logabsdet(self) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _all(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weight = self._weight()
        return weight, torch.linalg.inv(weight.double()).to(weight.dtype), self._logabsdet()

    def _parts(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        if self.training or torch.is_grad_enabled():  # cached tensors carry no gradient
            return self._weight(), None, self._logabsdet()
        return self._cache.get(tensors_of(self), self._all)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight, _, logabsdet = self._parts()
        y = conv1x1(x, weight)
        return y, (logabsdet * (x.shape[2] * x.shape[3])).expand(x.shape[0])

    def inverse_weight(self) -> torch.Tensor:
        """W^-1 as an (out, in) matrix: cached in inference, recomputed (with its gradient) otherwise."""
        inverse = self._parts()[1]
        return self._all()[1] if inverse is None else inverse

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return conv1x1(y, self.inverse_weight())


class InvConv1x1(InvertibleConv):
    """Plain invertible 1x1 convolution; log|det W| in float64 via slogdet."""

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(random_rotation(channels, generator))

    def _weight(self) -> torch.Tensor:
        return self.weight

    def _logabsdet(self) -> torch.Tensor:
        return torch.linalg.slogdet(self.weight.double())[1].to(self.weight.dtype)


class InvConv1x1LU(InvertibleConv):
    """LU-decomposed 1x1 convolution, W = P L (U + diag(s)): logdet is H*W*sum(log|s|), O(C) instead of O(C^3)."""

    def __init__(self, channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        p, lower, upper = torch.linalg.lu(random_rotation(channels, generator))
        s = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign_s", torch.sign(s))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1), persistent=False)
        self.register_buffer("eye", torch.eye(channels), persistent=False)
        self.lower = nn.Parameter(lower)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(torch.abs(s)))

    def _weight(self) -> torch.Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _logabsdet(self) -> torch.Tensor:
        return self.log_s.sum()


class Permutation(FlowLayer):
    """A fixed channel permutation (Glow's 'reverse' and 'shuffle' baselines); volume preserving."""

    def __init__(self, channels: int, kind: str = "reverse", generator: torch.Generator | None = None) -> None:
        super().__init__()
        if kind == "reverse":
            perm = torch.arange(channels - 1, -1, -1)
        elif kind == "shuffle":
            perm = torch.randperm(channels, generator=generator)
        else:
            raise ValueError(f"unknown permutation kind {kind!r}; expected 'reverse' or 'shuffle'")
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:, self.perm], x.new_zeros(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y[:, self.inverse_perm]


def make_permutation(kind: str, channels: int, generator: torch.Generator | None = None) -> FlowLayer:
    if kind == "lu":
        return InvConv1x1LU(channels, generator)
    if kind == "conv":
        return InvConv1x1(channels, generator)
    return Permutation(channels, kind, generator)

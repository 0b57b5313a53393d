"""Activation normalisation (Glow section 3.1)."""
from __future__ import annotations

import torch
from torch import nn

from .base import FlowLayer


class ActNorm(FlowLayer):
    """Per-channel affine map, initialised from the first batch it sees to zero mean and unit variance.

    The `initialized` flag is a buffer, so it travels in the state dict: a loaded model is never
    re-initialised from whatever batch it happens to see first.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)
        std = x.std(dim=(0, 2, 3), keepdim=True, unbiased=False)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std + self.eps))
        self.initialized.fill_(True)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            self.initialize(x)
        return (x + self.bias) * torch.exp(self.log_scale)

    def fold(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight and bias of one biased conv equal to a bias-free conv(weight) followed by this ActNorm: (Wx + b) e^s.

        Lets a net skip two full passes over its widest activations (and their backward) per normalisation.
        """
        scale = torch.exp(self.log_scale).reshape(-1)
        return weight * scale.view(-1, *[1] * (weight.dim() - 1)), self.bias.reshape(-1) * scale

    def fold_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Weight (out, in) and bias of one biased 1x1 conv equal to a bias-free conv(weight) followed by this
        ActNorm's inverse: (Wy) e^-s - b. Decoding then makes one pass over the activations per step, not three."""
        return weight * torch.exp(-self.log_scale).reshape(-1, 1), -self.bias.reshape(-1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.normalize(x)
        logdet = self.log_scale.sum() * (x.shape[2] * x.shape[3])
        return y, logdet.expand(x.shape[0])

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * torch.exp(-self.log_scale) - self.bias

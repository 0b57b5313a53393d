"""Variational dequantisation (Flow++ section 3.1): learn the noise q(u|x) instead of using U[0,1)^D.

Uniform noise forces the flow to put flat density boxes over every bin, which costs likelihood; a learned q lets
the bound E_q[log p(x+u) - log q(u|x)] get closer to the discrete log-likelihood.
"""
from __future__ import annotations

import torch
from torch import nn

from .actnorm import ActNorm
from .coupling import make_coupling
from .multiscale import gaussian_log_prob
from .nets import ConvNet
from .permutation import make_permutation

# decode floors x back to its bin: the encoding point keeps this far (in bins) from a bin's edges, so that the
# float error of an inverse pass can never carry a pixel across one
EDGE_MARGIN = 0.05
LU_SEED = 12345  # the dequantiser's 1x1 convs start from a fixed random rotation, independent of the model seed


class ImageFeatures(nn.Module):
    """x in [-0.5, 0.5] -> the feature map every coupling of q conditions on."""

    def __init__(self, in_channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConditionalStep(nn.Module):
    """ActNorm -> 1x1 conv -> coupling whose net also sees the x-features."""

    def __init__(self, config, generator: torch.Generator) -> None:
        super().__init__()
        channels, hidden = config.in_channels, config.dequant_hidden
        self.norm = ActNorm(channels)
        self.mix = make_permutation(config.permutation, channels, generator)

        def make_net(in_ch: int, out_ch: int) -> nn.Module:
            return ConvNet(in_ch + hidden, out_ch, hidden)

        self.coupling = make_coupling(config, channels, make_net)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, logdet_norm = self.norm(x)
        x, logdet_mix = self.mix(x)
        x, logdet_coupling = self.coupling(x, context)
        return x, logdet_norm + logdet_mix + logdet_coupling


class VariationalDequantizer(nn.Module):
    """u = Φ(f(ε; x)), ε ~ N(0, I), f a conditional flow; log q(u|x) = log N(ε) - log|det ∂u/∂ε|.

    Flow++ squashes with a sigmoid; the standard normal CDF Φ is used instead because Φ of a standard normal is
    exactly uniform, and f starts as a map that keeps ε standard normal (rotations, zero-initialised couplings that
    only scale, ActNorms initialised from data): a dequantiser added to a model trained with uniform noise starts
    at that model's bound instead of above it.
    """

    def __init__(self, config) -> None:
        super().__init__()
        self.n_bins = config.n_bins
        generator = torch.Generator().manual_seed(LU_SEED)
        self.features = ImageFeatures(config.in_channels, config.dequant_hidden)
        self.steps = nn.ModuleList(ConditionalStep(config, generator) for _ in range(config.dequant_depth))
        self.out_norm = ActNorm(config.in_channels)  # undoes the last coupling's starting scale of ~0.88

    def transform(self, eps: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The deterministic part: noise ε and pixel bins -> (u in [0, 1), log q(u | bins) per sample)."""
        context = self.features(bins / (self.n_bins - 1) - 0.5)
        h, logdet = eps, eps.new_zeros(eps.shape[0])
        for step in self.steps:
            h, step_logdet = step(h, context)
            logdet = logdet + step_logdet
        h, norm_logdet = self.out_norm(h)
        logdet = logdet + norm_logdet
        log_q = gaussian_log_prob(eps, eps.new_zeros(())) - logdet - gaussian_log_prob(h, h.new_zeros(()))
        # Φ rounds to exactly 1 for h > ~5.5 in float32; the largest float below 1 keeps u inside its bin.
        u = torch.special.ndtr(h).clamp(max=1.0 - torch.finfo(h.dtype).eps / 2)
        return u, log_q

    def centre(self, bins: torch.Tensor) -> torch.Tensor:
        """The noise an image is encoded at: q's image of ε = 0, deterministic like the bin centre it replaces.
        Trained together, the flow puts its density where q puts the noise, not at the bin centres: there the latents
        of real faces are atypical and attributes far less linearly readable (the model card has the figures)."""
        return self.transform(torch.zeros_like(bins), bins)[0].clamp(EDGE_MARGIN, 1.0 - EDGE_MARGIN)

    def forward(self, bins: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        eps = torch.randn(bins.shape, generator=generator, device=bins.device, dtype=bins.dtype)
        return self.transform(eps, bins)


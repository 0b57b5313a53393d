"""Logistic-mixture CDF coupling (Flow++ section 3.2): a far more flexible elementwise map than affine coupling."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import FlowLayer
from .coupling import NetPrecision, net_input

LOG_SCALE_BOUND = 7.0  # component log-scales live in [-7, 7] (Flow++ floors at -7): beyond, only round-off changes


def mixture_log_cdf(x: torch.Tensor, logits: torch.Tensor, means: torch.Tensor,
                    log_scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log c, log(1 - c), log pdf) of the mixture at x; the K components sit on dim 2.

    Both tails come from logsigmoid, never from 1 - c, so σ⁻¹(c) = log c - log(1 - c) is finite for every finite x
    (no clamping of c, and no 0 or 1 inside a log).
    """
    log_pi = F.log_softmax(logits, dim=2)
    z = (x.unsqueeze(2) - means) * torch.exp(-log_scales)
    lower, upper = F.logsigmoid(z), F.logsigmoid(-z)
    log_c = torch.logsumexp(log_pi + lower, dim=2)
    log_1mc = torch.logsumexp(log_pi + upper, dim=2)
    log_pdf = torch.logsumexp(log_pi + lower + upper - log_scales, dim=2)
    return log_c, log_1mc, log_pdf


class MixLogisticCoupling(NetPrecision, FlowLayer):
    """y_b = σ⁻¹(MixLogCDF(x_b; π, μ, s))·exp(a) + b, all parameters a function of x_a.

    With the zero-initialised last layer of the net every component is the standard logistic, a = b = 0, so a new
    layer is exactly the identity. The inverse solves the monotone equation by safeguarded Newton inside an exact
    bracket, in the logit domain where it is close to linear.
    """

    def __init__(self, channels: int, make_net, components: int = 8, max_iterations: int = 100,
                 tolerance: float = 1e-6) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"components must be >= 1, got {components}")
        self.split = channels // 2
        self.transformed = channels - self.split
        self.components = components
        self.max_iterations, self.tolerance = max_iterations, tolerance
        self.net: nn.Module = make_net(self.split, self.transformed * (3 * components + 2))
        self.a_scale = nn.Parameter(torch.ones(1, self.transformed, 1, 1))

    def _params(self, xa: torch.Tensor, context: torch.Tensor | None, training_forward: bool = False):
        inp = net_input(xa, context)
        h = self._net_forward(inp) if training_forward else self.net(inp)
        b, _, height, width = h.shape
        k = self.components
        h = h.reshape(b, 3 * k + 2, self.transformed, height, width).transpose(1, 2)
        logits, means, log_scales, a, shift = h.split([k, k, k, 1, 1], dim=2)
        a = torch.tanh(a.squeeze(2)) * self.a_scale  # bounded log-scale: exp(a) cannot blow up early in training
        return logits, means, log_scales.clamp(-LOG_SCALE_BOUND, LOG_SCALE_BOUND), a, shift.squeeze(2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        xa, xb = x[:, : self.split], x[:, self.split :]
        logits, means, log_scales, a, shift = self._params(xa, context, training_forward=True)
        log_c, log_1mc, log_pdf = mixture_log_cdf(xb, logits, means, log_scales)
        yb = (log_c - log_1mc) * torch.exp(a) + shift
        logdet = (log_pdf - log_c - log_1mc + a).flatten(1).sum(1)
        return torch.cat([xa, yb], dim=1), logdet

    def inverse(self, y: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        ya, yb = y[:, : self.split], y[:, self.split :]
        logits, means, log_scales, a, shift = self._params(ya, context)
        target = (yb - shift) * torch.exp(-a)
        xb = self._solve(target.detach(), logits.detach(), means.detach(), log_scales.detach())
        # The solver's value, with the implicit-function gradient dx = -d(residual) / slope w.r.t. y and the net.
        log_c, log_1mc, log_pdf = mixture_log_cdf(xb, logits, means, log_scales)
        residual = (log_c - log_1mc) - target
        slope = torch.exp(log_pdf - log_c - log_1mc).detach().clamp_min(torch.finfo(xb.dtype).tiny)
        xb = xb - (residual - residual.detach()) / slope
        return torch.cat([ya, xb], dim=1)

    @torch.no_grad()
    def _solve(self, target: torch.Tensor, logits: torch.Tensor, means: torch.Tensor,
               log_scales: torch.Tensor) -> torch.Tensor:
        """x with σ⁻¹(MixLogCDF(x)) = target. The logit of the mixture lies between the components' logits, so
        the root lies in [min_k, max_k] of μ_k + s_k·target: an exact bracket, kept through every Newton step."""
        scales = torch.exp(log_scales)
        roots = means + scales * target.unsqueeze(2)
        lo, hi = roots.min(dim=2).values, roots.max(dim=2).values
        x = (F.softmax(logits, dim=2) * roots).sum(2).clamp(lo, hi)
        for _ in range(self.max_iterations):
            log_c, log_1mc, log_pdf = mixture_log_cdf(x, logits, means, log_scales)
            residual = (log_c - log_1mc) - target
            lo = torch.where(residual < 0, x, lo)
            hi = torch.where(residual > 0, x, hi)
            newton = x - residual / torch.exp(log_pdf - log_c - log_1mc)
            inside = (newton > lo) & (newton < hi) & torch.isfinite(newton)
            x_next = torch.where(inside, newton, 0.5 * (lo + hi))
            step = (x_next - x).abs()
            x = x_next
            if bool((step <= self.tolerance * (1 + x.abs())).all()):
                break
        return x

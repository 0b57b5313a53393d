"""Glow (Kingma & Dhariwal 2018): multi-scale flow of ActNorm -> 1x1 conv -> coupling steps, Figure 2 of the paper."""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from .config import GlowConfig
from .fileio import save_safetensors
from .layers import (
    ActNorm,
    EvalCache,
    FlowSequential,
    InvertibleConv,
    Split,
    Squeeze,
    TopPrior,
    UniformDequantizer,
    conv1x1,
    gaussian_log_prob,
    make_cond_net,
    make_coupling,
    make_permutation,
    tensors_of,
)
from .layers.coupling import NetPrecision

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def to_bins(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """uint8 pixels -> integer bins in [0, 2**n_bits), as float."""
    return torch.div(x, 2 ** (8 - n_bits), rounding_mode="floor").float()


def from_bins(bins: torch.Tensor, n_bits: int) -> torch.Tensor:
    return (bins.clamp(0, 2**n_bits - 1) * 2 ** (8 - n_bits)).to(torch.uint8)


def reduce_bits(x: torch.Tensor, n_bits: int) -> torch.Tensor:
    """The n-bit version of a uint8 image, back in uint8 pixel scale: what decode(encode(x)) returns."""
    return from_bins(to_bins(x, n_bits), n_bits)


def make_dequantizer(config: GlowConfig) -> nn.Module:
    if config.dequant == "uniform":
        return UniformDequantizer()
    from .layers.variational import VariationalDequantizer

    return VariationalDequantizer(config)


class FlowStep(FlowSequential):
    """One step of flow: ActNorm -> invertible 1x1 conv (or permutation) -> coupling."""

    def __init__(self, config: GlowConfig, channels: int, generator: torch.Generator) -> None:
        super().__init__(
            ActNorm(channels),
            make_permutation(config.permutation, channels, generator),
            make_coupling(config, channels, partial(make_cond_net, config)),
        )

    def frozen_inverse(self, memory_format: torch.memory_format) -> Callable[[torch.Tensor], torch.Tensor]:
        """The 1x1 conv's inverse and ActNorm's inverse run as one biased GEMM: one pass over the activations, not 3."""
        norm, mix, coupling = self.layers
        if not isinstance(mix, InvertibleConv):
            return super().frozen_inverse(memory_format)
        with torch.no_grad():
            weight, bias = norm.fold_inverse(mix.inverse_weight())
        coupling_inverse = coupling.frozen_inverse(memory_format)
        return lambda y: conv1x1(coupling_inverse(y), weight, bias)


class Level(nn.Module):
    """squeeze -> K steps of flow -> split (except at the top level, which feeds the top prior)."""

    def __init__(self, config: GlowConfig, channels: int, last: bool, generator: torch.Generator) -> None:
        super().__init__()
        c = channels * 4
        self.flow = FlowSequential(Squeeze(), *[FlowStep(config, c, generator) for _ in range(config.depth)])
        self.split = None if last else Split(c)


class Glow(nn.Module):
    """Exact-likelihood image model; `forward(x)` is the training objective in bits/dim."""

    def __init__(self, config: GlowConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        self.levels = nn.ModuleList()
        self.latent_shapes: list[tuple[int, int, int]] = []
        channels, size = config.in_channels, config.image_size
        for i in range(config.levels):
            last = i == config.levels - 1
            self.levels.append(Level(config, channels, last, generator))
            channels, size = channels * 4, size // 2
            if last:
                self.latent_shapes.append((channels, size, size))
            else:
                self.latent_shapes.append((channels // 2, size, size))
                channels -= channels // 2
        self.top_prior = TopPrior(self.latent_shapes[-1])
        self.dequantizer = make_dequantizer(config)
        # Layout of activations inside the flow (not of weights or outputs): channels_last convs and 1x1 GEMMs run
        # without layout reorders, which on CPU makes single-image decoding markedly faster (README, Speed).
        self.memory_format = torch.channels_last
        self._frozen = EvalCache()

    # -- the flow itself ---------------------------------------------------------------------------
    def _check_images(self, x: torch.Tensor) -> None:
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8:
            raise TypeError(f"images must be a uint8 tensor (B, {c.in_channels}, H, W), got {getattr(x, 'dtype', type(x))}")
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}")

    def _continuous(self, bins: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return (bins + u) / self.config.n_bins - 0.5

    def flow_forward(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """x in [-0.5, 0.5] -> (latents per level, standardised latents, log p(x) per sample)."""
        logp = x.new_zeros(x.shape[0])
        latents, standardized = [], []
        h = x.contiguous(memory_format=self.memory_format)
        for level in self.levels:
            h, logdet = level.flow(h)
            logp = logp + logdet
            if level.split is not None:
                h, z = level.split.split(h)
                mean, log_std = level.split.prior_params(h)
            else:
                z = h
                mean, log_std = self.top_prior.prior_params(h.shape[0])
            eps = (z - mean) * torch.exp(-log_std)
            logp = logp + gaussian_log_prob(eps, log_std)
            latents.append(z)
            standardized.append(eps)
        return latents, standardized, logp

    def flow_inverse(self, latents: list[torch.Tensor], standardized: bool = False) -> torch.Tensor:
        """Top-down inverse; standardised latents are scaled by the prior of the level they belong to."""
        if len(latents) != len(self.levels):
            raise ValueError(f"expected {len(self.levels)} latent tensors, got {len(latents)}")
        inverses = self._level_inverses()
        h = None
        for i in reversed(range(len(self.levels))):
            level = self.levels[i]
            z = latents[i]
            if standardized:
                mean, log_std = (
                    self.top_prior.prior_params(z.shape[0]) if level.split is None else level.split.prior_params(h)
                )
                z = mean + torch.exp(log_std) * z
            z = z.contiguous(memory_format=self.memory_format)
            h = z if level.split is None else level.split.merge(h, z)
            h = inverses[i](h)
        return h

    def _level_inverses(self) -> list[Callable[[torch.Tensor], torch.Tensor]]:
        """Each level's inverse; in inference the frozen ones, kept until a parameter or buffer of a flow changes."""
        if self.training or torch.is_grad_enabled():
            return [level.flow.inverse for level in self.levels]
        flows = [level.flow for level in self.levels]
        return self._frozen.get(tensors_of(*flows), lambda: [f.frozen_inverse(self.memory_format) for f in flows],
                                tag=self.memory_format)

    # -- public API ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.bits_per_dim(x, generator=generator)

    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator | None = None,
                       importance_samples: int = 1) -> torch.Tensor:
        """Lower bound on log P(x) of the discrete n-bit image, in nats, per sample; K > 1 tightens it."""
        self._check_images(x)
        if importance_samples < 1:
            raise ValueError(f"importance_samples must be >= 1, got {importance_samples}")
        device = next(self.parameters()).device
        bins = to_bins(x.to(device), self.config.n_bits)
        estimates = []
        for _ in range(importance_samples):
            logp, log_q = self._bound_sample(bins, generator)
            estimates.append(logp - log_q)
        ll = torch.stack(estimates).logsumexp(0) - math.log(importance_samples)
        return ll - self.config.dims * math.log(self.config.n_bins)

    def _bound_sample(self, bins: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One dequantisation sample u ~ q(u | bins): (log p(x + u) of the flow, log q(u | bins)), in nats."""
        u, log_q = self.dequantizer(bins, generator)
        _, _, logp = self.flow_forward(self._continuous(bins, u))
        return logp, log_q

    def bound_terms(self, x: torch.Tensor, generator: torch.Generator | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The bound of bits_per_dim split into its two terms, per sample, one noise sample each, in bits/dim: (the
        flow's E_q[-log p(x + u)] with the bins' width, q's E_q[log q(u | x)]). They sum to bits_per_dim for the same
        noise; a train/held-out gap splits this way into what the flow and the dequantiser each add to it."""
        self._check_images(x)
        bins = to_bins(x.to(next(self.parameters()).device), self.config.n_bits)
        logp, log_q = self._bound_sample(bins, generator)
        scale = self.config.dims * math.log(2)
        return (self.config.dims * math.log(self.config.n_bins) - logp) / scale, log_q / scale

    def bits_per_dim(self, x: torch.Tensor, generator: torch.Generator | None = None,
                     importance_samples: int = 1) -> torch.Tensor:
        """-log2 P(x) / D at n_bits: an upper bound on the discrete NLL (uniform or variational dequantisation)."""
        ll = self.log_likelihood(x, generator, importance_samples)
        return -ll / (self.config.dims * math.log(2))

    def with_uniform_noise(self) -> "Glow":
        """The same flow scored with uniform dequantisation noise instead of its learned dequantiser: separates
        what the flow itself gained from what the dequantiser tightens the bound by."""
        model = Glow(dataclasses.replace(self.config, dequant="uniform")).to(next(self.parameters()).device)
        model.load_weights({k: v for k, v in self.state_dict().items() if not k.startswith("dequantizer.")})
        return model.train(self.training)

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Data-dependent ActNorm initialisation from a batch (run it once, before training)."""
        self.bits_per_dim(x)

    def encode(self, x: torch.Tensor, standardized: bool = False) -> list[torch.Tensor]:
        """Exact latents of every level, each pixel at the dequantiser's central noise (uniform: the bin centre)."""
        return self.encode_with_bpd(x, standardized)[0]

    def encode_with_bpd(self, x: torch.Tensor, standardized: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        """encode(x), and from the same pass each image's bits/dim at that point (no random noise, so the same image
        always gets the same number)."""
        self._check_images(x)
        device = next(self.parameters()).device
        bins = to_bins(x.to(device), self.config.n_bits)
        latents, eps, logp = self.flow_forward(self._continuous(bins, self.dequantizer.centre(bins)))
        bpd = -(logp - self.config.dims * math.log(self.config.n_bins)) / (self.config.dims * math.log(2))
        return [z.contiguous() for z in (eps if standardized else latents)], bpd

    def decode(self, latents: list[torch.Tensor], standardized: bool = False) -> torch.Tensor:
        """uint8 images; decode(encode(x)) == reduce_bits(x) exactly."""
        return self.quantize(self.flow_inverse(latents, standardized))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Continuous flow inputs in [-0.5, 0.5) -> uint8 images (values outside are clamped to the nearest bin)."""
        bins = torch.floor((x + 0.5) * self.config.n_bins)
        return from_bins(bins, self.config.n_bits).contiguous()

    def sample(self, n: int, temperature: float = 0.7, generator: torch.Generator | None = None) -> torch.Tensor:
        """n uint8 images with standardised latents ~ N(0, T^2); T = 0 gives the prior-mean image."""
        return self.decode(self.sample_latents(n, temperature, generator), standardized=True)

    def sample_latents(self, n: int, temperature: float = 0.7,
                       generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """The standardised latents `sample` decodes, per level: callers that decode in batches (the editor checks
        a deadline between them) draw the same faces from the same seed."""
        if n < 1 or temperature < 0:
            raise ValueError(f"need n >= 1 and temperature >= 0, got n={n}, temperature={temperature}")
        device = next(self.parameters()).device
        return [torch.randn((n, *shape), generator=generator).to(device) * temperature for shape in self.latent_shapes]

    # -- flat latent vectors -----------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        return sum(math.prod(s) for s in self.latent_shapes)

    def flatten_latents(self, latents: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([z.reshape(z.shape[0], -1) for z in latents], dim=1)

    def unflatten_latents(self, flat: torch.Tensor) -> list[torch.Tensor]:
        if flat.dim() == 1:
            flat = flat.unsqueeze(0)
        if flat.shape[1] != self.latent_dim:
            raise ValueError(f"flat latents must have {self.latent_dim} values per image, got {flat.shape[1]}")
        sizes = [math.prod(s) for s in self.latent_shapes]
        parts = torch.split(flat, sizes, dim=1)
        return [p.reshape(flat.shape[0], *s) for p, s in zip(parts, self.latent_shapes)]

    def level_slices(self) -> list[slice]:
        """Where each level's latents sit in the flat vector (level 0 is the finest)."""
        slices, start = [], 0
        for shape in self.latent_shapes:
            slices.append(slice(start, start + math.prod(shape)))
            start += math.prod(shape)
        return slices

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- mixed precision ---------------------------------------------------------------------------
    def set_coupling_precision(self, dtype: torch.dtype | None) -> None:
        """Run every coupling's net (the dequantiser's included) under autocast in `dtype` in training-mode
        forwards, its output cast back to float32; None (or float32) turns it off. ActNorm, the 1x1 convs, the
        log-determinants, the priors and the loss stay float32, and eval-mode forwards and every inverse (decoding)
        are untouched. A runtime setting: module structure and state-dict keys do not change, and it is not saved."""
        if dtype == torch.float32:
            dtype = None
        if dtype is not None and dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"coupling precision must be bfloat16, float16, float32 or None, got {dtype}")
        for module in self.modules():
            if isinstance(module, NetPrecision):
                module.net_dtype = dtype

    @property
    def coupling_precision(self) -> torch.dtype:
        """The dtype the coupling nets run in during training forwards (float32 unless set otherwise)."""
        dtypes = {m.net_dtype for m in self.modules() if isinstance(m, NetPrecision)}
        dtype = dtypes.pop() if len(dtypes) == 1 else None
        return torch.float32 if dtype is None else dtype

    # -- persistence ---------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """config.json + model.safetensors; fp16 storage halves the file."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        save_safetensors(state, path / WEIGHTS_NAME, metadata={"format": "pt"})
        self.config.save(path / CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "Glow":
        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"{path} is not a pretrained model directory (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        model = cls(GlowConfig.load(path / CONFIG_NAME))
        try:
            state = load_file(str(path / WEIGHTS_NAME))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read weights {path / WEIGHTS_NAME}: {err}") from None
        model.load_weights(state, source=str(path / WEIGHTS_NAME))
        return model.to(device).eval()

    def load_weights(self, state: dict[str, torch.Tensor], source: str = "state dict") -> None:
        """Strict load that names missing, unexpected and mis-shaped tensors; casts fp16 storage back up."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(
                f"{source} does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                f"wrong shape {wrong[:5]}"
            )
        bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
        if bad:
            raise ValueError(f"{source} holds non-finite values in {bad[:5]}")
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})

"""Evaluation: bits/dim with a standard error, over in-memory uint8 images."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def _per_image(score, model, images: torch.Tensor, batch_size: int, seed: int, progress: bool) -> list:
    """score(batch, generator) over the images in batches, in eval mode, with one seeded noise stream."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    values = []
    for start in tqdm(range(0, len(images), batch_size), desc="evaluating", disable=not progress, unit="batch"):
        values.append(score(images[start : start + batch_size], generator))
    model.train(was_training)
    return values


def bits_per_image(model, images: torch.Tensor, batch_size: int = 64, seed: int = 0, importance_samples: int = 1,
                   progress: bool = False) -> torch.Tensor:
    """Bits/dim of each image (float64). The dequantisation noise is seeded, so two models evaluated with the same
    seed see the same noise and their per-image difference is a paired comparison."""
    values = _per_image(lambda batch, g: model.bits_per_dim(batch, generator=g, importance_samples=importance_samples),
                        model, images, batch_size, seed, progress)
    return torch.cat(values).cpu().double()


def bound_terms_per_image(model, images: torch.Tensor, batch_size: int = 64, seed: int = 0,
                          progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Glow.bound_terms of each image (float64): the flow's term and the dequantiser's, which sum to
    bits_per_image's figure for the same seed."""
    values = _per_image(model.bound_terms, model, images, batch_size, seed, progress)
    return tuple(torch.cat([v[i] for v in values]).cpu().double() for i in range(2))


def mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN for a single value)."""
    se = values.std().item() / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return values.mean().item(), se


def evaluate_bpd(model, images: torch.Tensor, batch_size: int = 64, seed: int = 0, importance_samples: int = 1,
                 progress: bool = False) -> tuple[float, float]:
    """Mean bits/dim and its standard error over images; the dequantisation noise is seeded, so reruns agree."""
    return mean_and_se(bits_per_image(model, images, batch_size, seed, importance_samples, progress))

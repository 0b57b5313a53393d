"""Evaluation: bits/dim with a standard error, over in-memory uint8 images."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm


@torch.no_grad()
def evaluate_bpd(model, images: torch.Tensor, batch_size: int = 64, seed: int = 0, importance_samples: int = 1,
                 progress: bool = False) -> tuple[float, float]:
    """Mean bits/dim and its standard error over images; the dequantisation noise is seeded, so reruns agree."""
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    values = []
    for start in tqdm(range(0, len(images), batch_size), desc="evaluating", disable=not progress, unit="batch"):
        batch = images[start : start + batch_size]
        values.append(model.bits_per_dim(batch, generator=generator, importance_samples=importance_samples).cpu())
    model.train(was_training)
    bpd = torch.cat(values).double()
    se = bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")
    return bpd.mean().item(), se

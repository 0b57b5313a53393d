"""Figures: image grids, sample grids by temperature, and the one atomic PNG writer.

matplotlib is imported inside the functions that draw (through pyplot()), so importing flow_model never loads it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .fileio import atomic_path


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Lay out, write atomically (a crash never leaves half a PNG where a good one was) and free the figure."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    pyplot().close(fig)


def image_grid(images: torch.Tensor, columns: int, pad: int = 2) -> Image.Image:
    """uint8 (N, 3, H, W) -> one PIL image, row-major, with a white gutter."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images.cpu().permute(0, 2, 3, 1).numpy()):
        r, col = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = img
    return Image.fromarray(grid)


@torch.no_grad()
def temperature_grid(model, path: str | Path, temperatures=(0.5, 0.7, 1.0), per_row: int = 8, seed: int = 0,
                     title: str | None = None) -> None:
    """One row of samples per temperature, with the same seed in every row so rows differ only by T."""
    was_training = model.training
    model.eval()
    fig, axes = pyplot().subplots(len(temperatures), 1, figsize=(per_row * 0.9, len(temperatures) * 1.05 + 0.3))
    axes = np.atleast_1d(axes)
    for ax, t in zip(axes, temperatures):
        images = model.sample(per_row, temperature=t, generator=torch.Generator().manual_seed(seed))
        ax.imshow(image_grid(images, per_row))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(f"T={t:g}", rotation=0, labelpad=18, va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
    model.train(was_training)

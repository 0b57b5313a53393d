"""Figures a run writes: sample grids by temperature and the bits/dim curve."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .fileio import atomic_path  # noqa: E402


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Lay out, write atomically (a crash never leaves half a PNG where a good one was) and free the figure."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


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
    fig, axes = plt.subplots(len(temperatures), 1, figsize=(per_row * 0.9, len(temperatures) * 1.05 + 0.3))
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


def plot_curves(metrics_file: str | Path, path: str | Path, title: str = "") -> None:
    """Train and validation bits/dim against step, from a run's metrics.jsonl."""
    train, val = {}, {}
    for line in Path(metrics_file).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if "train_bpd" in row:
            train[row["step"]] = row["train_bpd"]
        if "val_bpd" in row:
            val[row["step"]] = (row["val_bpd"], row.get("val_bpd_se", 0.0))
    fig, ax = plt.subplots(figsize=(6, 4))
    if train:
        steps = np.array(sorted(train))
        values = np.array([train[s] for s in steps])
        ax.plot(steps, values, alpha=0.3, color="C0", label="train (per logged step)")
        if len(values) >= 20:
            k = max(5, len(values) // 50)
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, color="C0", label=f"train ({k}-point mean)")
    if val:
        steps = sorted(val)
        ax.errorbar(steps, [val[s][0] for s in steps], yerr=[val[s][1] for s in steps], color="C1",
                    marker="o", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("bits/dim")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    if train or val:
        everything = list(train.values()) + [v for v, _ in val.values()]
        ax.set_ylim(min(everything) - 0.05, np.percentile(everything, 98) + 0.1)
    save_figure(fig, path)

"""How good the attribute directions are: a printed AUC table and figures (AUC bars, class projection histograms)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from flow_model.visualize import pyplot, save_figure

from .directions import Directions

HISTOGRAM_ATTRIBUTES = ("Smiling", "Young", "Blond_Hair", "Male")


def _fmt(value: float, digits: int = 3) -> str:
    return "  n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def auc_table(directions: Directions) -> str:
    """One row per attribute: held-out AUC of both methods, classifier accuracy, class counts, vector norms."""
    header = (f"{'attribute':<20} {'AUC mean_diff':>13} {'AUC classifier':>14} {'acc':>6} {'bal.acc':>7} "
              f"{'n_pos':>6} {'n_neg':>6} {'|mean_diff|':>11} {'|classifier|':>12}")
    lines = [header, "-" * len(header)]
    for name in directions.names:
        md, clf = directions.info[name]["mean_diff"], directions.info[name]["classifier"]
        note = "  (fallback: too few examples)" if clf.get("fallback") else ""
        lines.append(f"{name:<20} {_fmt(md['auc']):>13} {_fmt(clf['auc']):>14} {_fmt(clf['accuracy']):>6} "
                     f"{_fmt(clf['balanced_accuracy']):>7} {md['n_pos']:>6} {md['n_neg']:>6} "
                     f"{md['norm']:>11.3f} {clf['norm']:>12.3f}{note}")
    for method in ("mean_diff", "classifier"):
        aucs = [directions.info[n][method]["auc"] for n in directions.names]
        aucs = [a for a in aucs if not math.isnan(a)]
        if aucs:
            lines.append(f"mean held-out AUC, {method}: {np.mean(aucs):.3f} over {len(aucs)} attributes")
    return "\n".join(lines)


def plot_aucs(directions: Directions, path: str | Path) -> None:
    """Held-out AUC per attribute for both methods, sorted by the classifier's."""
    def auc(name: str, method: str) -> float:
        value = directions.info[name][method]["auc"]
        return 0.0 if math.isnan(value) else value

    names = sorted(directions.names, key=lambda n: auc(n, "classifier"))
    y = np.arange(len(names))
    fig, ax = pyplot().subplots(figsize=(7, 0.22 * len(names) + 1.2))
    ax.barh(y - 0.2, [auc(n, "mean_diff") for n in names], height=0.4, label="mean difference")
    ax.barh(y + 0.2, [auc(n, "classifier") for n in names], height=0.4, label="linear classifier")
    ax.axvline(0.5, color="gray", lw=0.8, ls="--")
    ax.set_yticks(y, names, fontsize=7)
    ax.set_xlim(0.4, 1.0)
    ax.set_xlabel("held-out ROC-AUC of the direction as a linear score (missing: too few examples)")
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, path)


def plot_projections(directions: Directions, latents: np.ndarray, positive: np.ndarray, path: str | Path,
                     attributes: tuple[str, ...] = HISTOGRAM_ATTRIBUTES) -> list[str]:
    """Histograms of positives vs negatives projected on each attribute's unit classifier direction.

    latents should be held-out images; positive is (N, n_attr) boolean in directions.names order.
    Returns the attributes drawn (those present).
    """
    shown = [a for a in attributes if a in directions.names]
    if not shown:
        return []
    fig, axes = pyplot().subplots(1, len(shown), figsize=(3.2 * len(shown), 2.8), squeeze=False)
    for ax, name in zip(axes[0], shown):
        v = directions.vector(name, "classifier").double().numpy()
        norm = np.linalg.norm(v)
        proj = latents @ (v / norm) if norm > 0 else np.zeros(len(latents))
        y = positive[:, directions.names.index(name)]
        bins = np.histogram_bin_edges(proj, bins=int(np.clip(len(proj) // 8, 10, 40)))
        ax.hist(proj[~y], bins=bins, alpha=0.6, density=True, label=f"not {name} ({(~y).sum()})")
        ax.hist(proj[y], bins=bins, alpha=0.6, density=True, label=f"{name} ({y.sum()})")
        ax.set_title(f"{name}: AUC {_fmt(directions.info[name]['classifier']['auc'])}", fontsize=9)
        ax.set_xlabel("projection on the unit classifier direction", fontsize=7)
        ax.legend(fontsize=6)
    fig.suptitle(f"{len(latents)} held-out images", fontsize=8)
    save_figure(fig, path)
    return shown

"""Learning curves: one plot_curves for every bits/dim-against-time figure (a run's bpd.png, the ablation's and the
pilots' wall-clock plots), and the adaptor that reads a run's metrics.jsonl into curves."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..visualize import pyplot, save_figure


@dataclass
class Curve:
    """One line (or, with `yerr`, points with error bars) of a learning-curve figure; `style` goes to matplotlib."""

    x: list[float]
    y: list[float]
    label: str | None = None
    yerr: list[float] | None = None
    style: dict = field(default_factory=dict)


def plot_curves(curves: list[Curve], path: str | Path, *, xlabel: str, ylabel: str = "bits/dim", title: str = "",
                ylim: tuple[float, float] | None = None, figsize: tuple[float, float] = (6.5, 4.2), dpi: int = 110,
                legend_size: float | None = 8) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize)
    for c in curves:
        if c.yerr is None:
            ax.plot(c.x, c.y, label=c.label, **c.style)
        else:
            ax.errorbar(c.x, c.y, yerr=c.yerr, label=c.label, **c.style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    if ylim is not None:
        ax.set_ylim(*ylim)
    save_figure(fig, path, dpi=dpi)


def read_run(metrics_file: str | Path, until: int | None = None) -> tuple[dict, dict]:
    """A run's metrics.jsonl up to step `until`: {step: train bits/dim} and {step: (validation bits/dim, s.e.)}
    (the trainer validates its EMA weights); lines that are not JSON (a write cut short by a kill) are skipped."""
    train, val = {}, {}
    for line in Path(metrics_file).read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if until is not None and row["step"] > until:
            continue
        if "train_bpd" in row:
            train[row["step"]] = row["train_bpd"]
        if "val_bpd" in row:
            val[row["step"]] = (row["val_bpd"], row.get("val_bpd_se", 0.0))
    return train, val


def plot_run(metrics_file: str | Path, path: str | Path, title: str = "",
             shipped: tuple[int, float, float, str] | None = None, until: int | None = None) -> None:
    """Train and validation bits/dim against step, from a run's metrics.jsonl (up to step `until`, where the
    released weights were taken from a run that went on); `shipped` = (step, bits/dim, s.e., label) marks the
    released weights' validation where the run's own points do not show it (raw weights beside the EMA's, or an EMA
    the run never validated at that step)."""
    train, val = read_run(metrics_file, until)
    curves = []
    if train:
        steps = np.array(sorted(train))
        values = np.array([train[s] for s in steps])
        curves.append(Curve(steps, values, "train (per logged step)", style=dict(alpha=0.3, color="C0")))
        if len(values) >= 20:
            k = max(5, len(values) // 50)
            smooth = np.convolve(values, np.ones(k) / k, mode="valid")
            curves.append(Curve(steps[k - 1:], smooth, f"train ({k}-point mean)", style=dict(color="C0")))
    if val:
        steps = sorted(val)
        curves.append(Curve(steps, [val[s][0] for s in steps], "validation", yerr=[val[s][1] for s in steps],
                            style=dict(color="C1", marker="o")))
    if shipped is not None:
        step, bpd, se, label = shipped
        curves.append(Curve([step], [bpd], label, yerr=[se], style=dict(color="C3", marker="*", markersize=12)))
    ylim = None
    if train or val:
        everything = list(train.values()) + [v for v, _ in val.values()] + ([shipped[1]] if shipped else [])
        ylim = (min(everything) - 0.05, np.percentile(everything, 98) + 0.1)
    plot_curves(curves, path, xlabel="step", title=title, ylim=ylim, figsize=(6, 4), dpi=100, legend_size=None)

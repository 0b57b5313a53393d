"""Compare short pilot runs trained with the same settings: a table, a curve and the samples, as one markdown page.

The pilots themselves are ordinary `python -m flow_model train` runs with `--max-minutes`; this only reads their
run directories, so it can be re-run while the runs are kept. The hand-written account below the `## Account`
heading of an existing report survives regeneration. The command: `python -m experiments pilot-report`.
"""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import torch

from flow_model.data import load_images, open_dataset, select
from flow_model.evaluate import bits_per_image, mean_and_se
from flow_model.fileio import write_text
from flow_model.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, model_from_checkpoint
from flow_model.training.curves import Curve, plot_curves
from flow_model.visualize import image_grid, pyplot, save_figure

from .ablation import kept_account

TEMPERATURES = (0.5, 0.7)
SMOOTH = 10  # logged training points per running mean


def read_run(run_dir: Path) -> dict:
    """The last validation, throughput and training curve of one run, from its checkpoint and metrics.jsonl; the model
    is the one the trainer validated (its EMA when it kept one)."""
    state = load_checkpoint(run_dir / CHECKPOINT_NAME)
    meta = state["meta"]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if "train_bpd" in r]
    val = [r for r in rows if "val_bpd" in r]
    if not train or not val:
        raise ValueError(f"{run_dir}: no training or validation rows in metrics.jsonl; did the run finish?")
    m, t = meta["model_config"], meta["train_config"]
    return {
        "name": run_dir.name, "model": m, "train": t, "steps": meta["step"],
        "glow": model_from_checkpoint(state, source=str(run_dir)),
        "val_names": meta["split"]["val"][: t["val_max"]] if t.get("val_max") else meta["split"]["val"],
        "precision": meta.get("precision", t.get("precision", "fp32")),  # as run; older checkpoints: as asked
        "minutes": meta["elapsed"] / 60, "img_per_s": meta["step"] * t["batch_size"] / meta["elapsed"],
        "val_bpd": val[-1]["val_bpd"], "val_bpd_se": val[-1]["val_bpd_se"],
        "curve": ([r["minutes"] for r in train], [r["train_bpd"] for r in train]),
    }


def plot(runs: list[dict], path: Path) -> None:
    curves = []
    for i, r in enumerate(runs):
        minutes, bpd = map(np.asarray, r["curve"])
        k = min(SMOOTH, len(bpd))
        curves.append(Curve(minutes[k - 1:], np.convolve(bpd, np.ones(k) / k, mode="valid"),
                            f"{r['name']} (train, {k}-point mean)", style=dict(color=f"C{i}")))
        curves.append(Curve([r["minutes"]], [r["val_bpd"]], yerr=[r["val_bpd_se"]],
                            style=dict(color=f"C{i}", marker="o", capsize=3)))
    finals = [r["val_bpd"] for r in runs]
    plot_curves(curves, path, xlabel="training wall-clock (minutes)", ylabel="bits/dim (dots: validation at the end)",
                ylim=(min(finals) - 0.3, max(finals) + 0.6))


@torch.no_grad()
def samples(runs: list[dict], path: Path, per_row: int, seed: int) -> None:
    """One row per run and temperature, the same noise seed in every row."""
    rows = len(runs) * len(TEMPERATURES)
    fig, axes = pyplot().subplots(rows, 1, figsize=(per_row * 0.9, rows * 1.0 + 0.2))
    for i, r in enumerate(runs):
        for j, t in enumerate(TEMPERATURES):
            ax = axes[i * len(TEMPERATURES) + j]
            noise = torch.Generator().manual_seed(seed)
            ax.imshow(image_grid(r["glow"].sample(per_row, temperature=t, generator=noise), per_row))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{r['name']}, T={t:g}", loc="left", fontsize=7, pad=2)
    save_figure(fig, path)


def add_paired_differences(runs: list[dict], data: Path) -> None:
    """Each run's per-face bits/dim minus the best run's, mean ± s.e. over the validation faces they share, with the
    same dequantisation noise: the spread between faces cancels, so differences far below the per-run standard
    error can be told from noise."""
    names = runs[0]["val_names"]
    if any(r["val_names"] != names for r in runs):
        raise ValueError("the runs were validated on different faces: no paired comparison (drop --data)")
    images, _ = load_images(select(open_dataset(data), names), runs[0]["model"]["image_size"], workers=0,
                            progress=False)
    if len(images) != len(names):
        raise ValueError(f"{data} holds {len(images)} of the runs' {len(names)} validation faces")
    per_face = [bits_per_image(r["glow"], images, seed=runs[0]["train"]["seed"]) for r in runs]  # one noise for all
    best = min(per_face, key=lambda v: v.mean().item())
    for r, values in zip(runs, per_face):
        r["paired"] = mean_and_se(values - best)


def write_report(run_dirs: list[Path], out: Path, per_row: int = 8, seed: int = 0,
                 data: Path | None = None) -> list[dict]:
    """Read the runs, draw the curve and the samples next to `out`, write the markdown; -> the runs, best first.
    With `data` (the runs' dataset) the table also gives each run's paired difference from the best."""
    missing = [str(d) for d in run_dirs if not (d / CHECKPOINT_NAME).is_file()]
    if missing:
        raise ValueError(f"no {CHECKPOINT_NAME} in: {', '.join(missing)}")
    runs = [read_run(d) for d in run_dirs]
    if data is not None:
        add_paired_differences(runs, data)
    out.parent.mkdir(parents=True, exist_ok=True)
    plot(runs, out.with_name(f"{out.stem}_bpd.png"))
    samples(runs, out.with_name(f"{out.stem}_samples.png"), per_row, seed)
    command = "python -m experiments pilot-report " + shlex.join(
        [str(d) for d in run_dirs] + ["--out", str(out)] + (["--data", str(data)] if data is not None else []))
    write_text(out, report(runs, out, command) + kept_account(
        out, "what the numbers show, which run leads at equal minutes, and what the budget allowed"))
    return sorted(runs, key=lambda r: r["val_bpd"])


def report(runs: list[dict], out: Path, command: str) -> str:
    t = runs[0]["train"]
    shared = (f"{t['batch_size']} images per batch, {t['optimizer']} lr {t['lr']:g} with {t['warmup_steps']} "
              f"warm-up steps, seed {t['seed']}"
              + (f", {t['max_minutes']:g} min each" if t["max_minutes"] else f", {t['max_steps']} steps each"))
    paired = "paired" in runs[0]
    rows = ["| run | levels × steps, hidden, coupling | coupling nets in | parameters | val bits/dim (mean ± s.e.) "
            + ("| minus the best, paired (mean ± s.e.) " if paired else "") + "| steps | img/s |",
            "|---|---|---|---:|---|" + ("---|" if paired else "") + "---:|---:|"]
    for r in sorted(runs, key=lambda r: r["val_bpd"]):
        m = r["model"]
        rows.append(f"| {r['name']} | {m['levels']} × {m['depth']}, {m['hidden']}, {m['coupling']} | "
                    f"{r['precision']} | {r['glow'].num_parameters() / 1e6:.2f}M | "
                    f"{r['val_bpd']:.4f} ± {r['val_bpd_se']:.4f} | "
                    + (f"{r['paired'][0]:+.4f} ± {r['paired'][1]:.4f} | " if paired else "")
                    + f"{r['steps']} | {r['img_per_s']:.1f} |")
    m = runs[0]["model"]
    lines = [
        f"# {m['image_size']}x{m['image_size']} pilots",
        "",
        f"Regenerate with `{command}`.",
        "",
        f"Every pilot: {m['image_size']}x{m['image_size']}, {m['n_bits']}-bit, the same split, data order and "
        f"training settings ({shared}). Validation bits/dim at the end of each run over the whole validation "
        "split, mean ± standard error over images.",
        "",
        *rows,
        "",
        f"![training and validation bits/dim against wall-clock]({out.stem}_bpd.png)",
        "",
        f"Samples (rows: pilot and temperature; the same noise in every row): ![samples]({out.stem}_samples.png)",
        "",
    ]
    return "\n".join(lines) + "\n"

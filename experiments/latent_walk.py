"""Can a non-linear hold keep gender fixed where the linear ones cannot?

    python -m experiments latent-walk --out experiments/latent_walk.md

Every slider the editor ships is one linear direction in the latent, made orthogonal to the held attributes'
directions (or their INLP nullspaces). docs/edits.md found that across fits these move along one curve of flip
against leakage, and experiments/leakage_floor.md that Male stays readable after the held directions are removed:
the latent carries gender non-linearly, so a linear hold keeps a linear read-out fixed and lets the rest through.

This pilot tries the simplest non-linear alternative. A small MLP (the probe) learns to read all 40 attributes from
the coarsest latent level of the model's own training faces, where the sliders' directions put nearly all of their
length. Per face, then:

- *linear + probe hold*: the shipped edit, followed by a few Gauss-Newton steps on the coarsest level back to the
  probe's logits of the held attributes before the edit (the least-norm change that restores them);
- *probe walk*: no fixed direction; `steps` steps along the gradient of the probe's logit of the slider's attribute,
  each made orthogonal to the held attributes' gradients at that point and followed by the same hold, as far in the
  coarsest level as the shipped edit moves at that strength.

The probe never sees the attribute classifier (the instrument that measures the edits) nor the report faces. Each
method runs at the same strengths (multiples of the shipped +1) on evaluate-edits' report faces, through the checked
decode (an edit that does not decode shows the face unedited, as calibration counts it). The fair comparison is
leakage at equal flip: a method that edits less leaks less, so each method's leakage is read off its own curve at the
shipped edit's flip at +1 (linear in flip between measured strengths; NaN outside the measured flips).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from app.calibration import TARGET_FLIP
from app.classifier import load_instrument
from app.directions import encode_images
from app.edit_evaluation import (LEAK_ATTRIBUTES, decoded_or_unedited, encode_faces, measure_vector, target_leaks,
                                 validation_halves)
from app.service import SLIDER_BY_LABEL, EditorService
from flow_model.data import load_images, open_dataset, select
from flow_model.fileio import write_text

from .ablation import kept_account

log = logging.getLogger(__name__)

METHODS = ("linear", "linear + probe hold", "probe walk")
STRENGTHS = (0.5, 1.0, 1.5, 2.0, 3.0)
SLIDERS = ("Smiling", "Age", "Beard", "Eyeglasses", "Pale skin", "Heavy makeup", "Gray hair")
ACCOUNT_PROMPT = "what the numbers show: does the probe's hold leak less than the linear edit at equal flip"


@dataclass
class ProbeConfig:
    hidden: int = 512
    input_dropout: float = 0.1
    dropout: float = 0.3
    weight_decay: float = 0.05
    lr: float = 1e-3
    batch_size: int = 128
    max_epochs: int = 30
    patience: int = 4  # epochs without a lower held-out loss before fitting stops
    val_fraction: float = 0.125
    seed: int = 0


class LatentProbe(nn.Module):
    """An MLP from one latent level to every attribute's logit; its gradients give per-face directions."""

    def __init__(self, dim: int, attributes: list[str], cfg: ProbeConfig) -> None:
        super().__init__()
        self.attributes = list(attributes)
        self.net = nn.Sequential(nn.Dropout(cfg.input_dropout), nn.Linear(dim, cfg.hidden), nn.SiLU(),
                                 nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, len(attributes)))

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return self.net(c)

    def jacobian(self, c: torch.Tensor, columns: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, k) logits of `columns` at c and their (B, k, D) gradients; each face's rows depend on it alone."""
        c = c.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            out = self(c)
            rows = [torch.autograd.grad(out[:, j].sum(), c, retain_graph=True)[0] for j in columns]
        return out.detach()[:, columns], torch.stack(rows, 1)


def fit_probe(z: torch.Tensor, y: torch.Tensor, attributes: list[str], cfg: ProbeConfig) -> tuple[LatentProbe, dict]:
    """Fits on all but the last `val_fraction` of a seeded permutation and keeps the epoch with the lowest held-out
    loss; -> the probe (eval mode, frozen) and the held-out AUC per attribute, of the probe and of a logistic
    regression on the same split (what the linear directions can read). Its initial weights and dropout draw from
    `cfg.seed` too, so the same inputs give the same probe."""
    if len(z) != len(y) or len(z) < 16:
        raise ValueError(f"need at least 16 latents with one label row each, got {len(z)} latents, {len(y)} rows")
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        return _fit(z, y, attributes, cfg)


def _fit(z: torch.Tensor, y: torch.Tensor, attributes: list[str], cfg: ProbeConfig) -> tuple[LatentProbe, dict]:
    g = torch.Generator().manual_seed(cfg.seed)
    perm = torch.randperm(len(z), generator=g)
    n_val = max(8, int(len(z) * cfg.val_fraction))
    val, train = perm[:n_val], perm[n_val:]
    probe = LatentProbe(z.shape[1], attributes, cfg)
    opt = torch.optim.AdamW(probe.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    loss = nn.BCEWithLogitsLoss()
    best, state, since = float("inf"), None, 0
    for _ in range(cfg.max_epochs):
        probe.train()
        for idx in train[torch.randperm(len(train), generator=g)].split(cfg.batch_size):
            opt.zero_grad()
            loss(probe(z[idx]), y[idx]).backward()
            opt.step()
        probe.eval()
        with torch.no_grad():
            held = float(loss(probe(z[val]), y[val]))
        if held < best:
            best, state, since = held, {k: v.clone() for k, v in probe.state_dict().items()}, 0
        else:
            since += 1
            if since >= cfg.patience:
                break
    probe.load_state_dict(state)
    probe.eval().requires_grad_(False)
    with torch.no_grad():
        scores = probe(z[val]).numpy()
    auc = {}
    for j, a in enumerate(attributes):
        yv, yt = y[val, j].numpy(), y[train, j].numpy()
        if 0 < yv.sum() < len(yv) and 0 < yt.sum() < len(yt):
            linear = LogisticRegression(C=0.01, max_iter=300).fit(z[train].numpy(), yt)
            auc[a] = {"probe": float(roc_auc_score(yv, scores[:, j])),
                      "linear": float(roc_auc_score(yv, linear.decision_function(z[val].numpy())))}
    return probe, {"held_out_loss": best, "auc": auc, "fit_faces": len(train), "val_faces": len(val)}


def hold(probe: LatentProbe, c: torch.Tensor, goal: torch.Tensor, columns: list[int], iters: int = 4,
         ridge: float = 1e-3) -> torch.Tensor:
    """Gauss-Newton steps taking the probe's logits of `columns` back to `goal` (B, k) by the least-norm change."""
    if not columns:
        return c
    for _ in range(iters):
        f, jac = probe.jacobian(c, columns)
        gram = jac @ jac.transpose(1, 2) + ridge * torch.eye(len(columns))
        c = c - (jac.transpose(1, 2) @ torch.linalg.solve(gram, (f - goal)[..., None]))[..., 0]
    return c.detach()


def walk(probe: LatentProbe, c0: torch.Tensor, target: int, sign: float, held: list[int], length: torch.Tensor | float,
         steps: int = 8) -> torch.Tensor:
    """`steps` equal steps of total `length` (per face) up the probe's `sign` x logit of `target`, each orthogonal to
    the held logits' gradients and followed by a hold back to their starting values."""
    goal = probe.jacobian(c0, held)[0] if held else None
    per_step = torch.as_tensor(length, dtype=c0.dtype).reshape(-1, 1) / steps
    c = c0.detach().clone()
    for _ in range(steps):
        jac = probe.jacobian(c, [target, *held])[1]
        grad = sign * jac[:, 0]
        if held:
            q, _ = torch.linalg.qr(jac[:, 1:].transpose(1, 2))
            grad = grad - (q @ (q.transpose(1, 2) @ grad[..., None]))[..., 0]
        c = c + per_step * grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-12)
        c = hold(probe, c, goal, held, iters=2) if held else c
    return c


def leak_at_flip(rows: list[dict], flip: float, attribute: str) -> float:
    """A method's leakage into `attribute` where its curve (rows by strength) reaches `flip`: linear in flip between
    measured strengths, the flips made non-decreasing first (an edit pushed past decoding flips fewer faces, and
    the strength that first reached a flip is the one a calibration would pick); NaN outside the measured flips."""
    rows = sorted(rows, key=lambda r: r["strength"])
    flips = np.maximum.accumulate([r["flip"] for r in rows])
    if not len(rows) or not flips[0] <= flip <= flips[-1]:
        return float("nan")
    rising = [i for i in range(len(rows)) if i == 0 or flips[i] > flips[i - 1]]
    if len(rising) == 1:
        return float(rows[0]["leakage"][attribute])
    return float(np.interp(flip, flips[rising], [rows[i]["leakage"][attribute] for i in rising]))


def load_for_sliders(model: Path, sliders: list[str]) -> tuple[EditorService, dict]:
    """The editor on `model` and its split, for a study of the sliders `sliders`: refused, naming the problem, where
    the model has no directions or a label is no slider."""
    service = EditorService.load(model, align=False)
    if service.directions is None:
        raise ValueError(f"{model} has no directions: no slider to measure")
    unknown = [s for s in sliders if s not in SLIDER_BY_LABEL]
    if unknown:
        raise ValueError(f"unknown slider(s) {unknown}; valid: {list(SLIDER_BY_LABEL)}")
    return service, json.loads((model / "split.json").read_text())


def measure(model: Path, classifier_dir: Path, data_dir: Path, faces: int, probe_faces: int, sliders: list[str],
            strengths: tuple[float, ...] = STRENGTHS, steps: int = 8, cfg: ProbeConfig = ProbeConfig(),
            seed: int = 0) -> dict:
    """Fits the probe on the coarsest level of `probe_faces` training faces, then measures every method on `faces`
    report faces; -> the results `render` writes."""
    started = time.perf_counter()
    service, split = load_for_sliders(model, sliders)
    data = open_dataset(data_dir)
    coarse = service.model.level_slices()[-1]

    train = sorted(split["train"])
    chosen = [train[i] for i in np.random.default_rng(seed).permutation(len(train))[:probe_faces]]
    images, kept = load_images(select(data, chosen), service.image_size, workers=2, progress=False)
    with torch.inference_mode():
        z = torch.from_numpy(encode_images(service.model, images, progress=False)[:, coarse].copy())
    y = torch.from_numpy(kept.labels > 0).float()
    probe, fit = fit_probe(z, y, data.attributes, cfg)
    log.info("probe on %d faces: held-out AUC %s", len(z), " ".join(
        f"{a} {v['probe']:.3f}/{v['linear']:.3f}" for a, v in fit["auc"].items() if a in ("Male", "Young")))

    classifier = load_instrument(classifier_dir)
    report = validation_halves(split["val"], seed)[1][:faces]
    images, _ = load_images(select(data, report), service.image_size, workers=0, progress=False)
    face_set = encode_faces(service, classifier, images)
    base = face_set.latents.clone()  # outside inference mode, so the probe can take gradients at it
    rows = []
    for label in sliders:
        spec = SLIDER_BY_LABEL[label]
        calibrated = service.slider(label)
        held_names = [k for k in (calibrated.keep if calibrated is not None else ()) if k != spec.attribute]
        held = [probe.attributes.index(k) for k in held_names]
        target = probe.attributes.index(spec.attribute)
        # (D,), or (N, D) for a slider whose direction depends on the face
        vector = service.edit_vectors([label], latent=base)[0] * service.multiplier(label, 1.0)
        goal = probe.jacobian(base[:, coarse], held)[0] if held else None
        for s in strengths:
            linear = base + s * vector
            held_edit = linear.clone()
            held_edit[:, coarse] = hold(probe, linear[:, coarse], goal, held)
            walked = base.clone()
            walked[:, coarse] = walk(probe, base[:, coarse], target, spec.sign, held,
                                     (s * vector[..., coarse]).norm(dim=-1), steps)
            for method, latents in zip(METHODS, (linear, held_edit, walked)):
                shown, ok = decoded_or_unedited(service, face_set, latents)
                m = measure_vector(service, classifier, face_set, vector, s, spec.attribute, spec.sign,
                                   backoff=False, edited=(shown, ok))
                rows.append({"slider": label, "method": method, "strength": s, "flip": m["flip"],
                             "moved": m["moved"], "leakage": m["leakage"], "pixel": m["pixel"],
                             "undecoded": float(1 - ok.mean()), "held": held_names,
                             "latent_change": float((latents - base).norm(dim=1).mean())})
                log.info("%-13s x%-4g %-20s flip %.2f moved %.2f %s", label, s, method, m["flip"], m["moved"],
                         " ".join(f"{a} {v:.3f}" for a, v in m["leakage"].items()))
    return {"model": str(model), "faces": len(base), "probe": {**fit, "config": asdict(cfg),
            "level": f"{coarse.stop - coarse.start} values of the coarsest level"}, "steps": steps,
            "rows": rows, "minutes": (time.perf_counter() - started) / 60}


def comparisons(results: dict, methods: tuple[str, ...] = METHODS) -> list[dict]:
    """Per slider: the shipped edit's (method "linear") flip at +1, each method's leakage there and at TARGET_FLIP in
    the issue's lines, and each method's highest flip over its strengths."""
    out = []
    for label in dict.fromkeys(r["slider"] for r in results["rows"]):
        rows = [r for r in results["rows"] if r["slider"] == label]
        at_one = next((r for r in rows if r["method"] == "linear" and r["strength"] == 1.0), None)
        if at_one is None:
            continue
        lines = target_leaks(SLIDER_BY_LABEL[label].attribute)
        at = lambda flip: {method: {a: leak_at_flip([r for r in rows if r["method"] == method], flip, a)  # noqa
                                    for a in lines} for method in methods}
        peak = {method: max((r["flip"] for r in rows if r["method"] == method), default=float("nan"))
                for method in methods}
        out.append({"slider": label, "flip": at_one["flip"], "lines": list(lines), "leak": at(at_one["flip"]),
                    "leak_at_target": at(TARGET_FLIP), "peak_flip": peak})
    return out


def plot(results: dict, path: Path, methods: tuple[str, ...] = METHODS) -> None:
    """Per slider, leakage into Male against flip along each method's strengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["slider"] for r in results["rows"]))
    cols = min(4, len(labels))
    rows_ = -(-len(labels) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(3.0 * cols, 2.8 * rows_), squeeze=False, sharey=True)
    for ax in axes.flat[len(labels):]:
        ax.axis("off")
    for ax, label in zip(axes.flat, labels):
        for method in methods:
            rows = sorted((r for r in results["rows"] if r["slider"] == label and r["method"] == method),
                          key=lambda r: r["strength"])
            ax.plot([r["flip"] for r in rows], [r["leakage"]["Male"] for r in rows], "o-", ms=3, label=method)
        ax.axhline(0.05, color="grey", lw=0.8, ls="--")
        ax.axvline(0.6, color="grey", lw=0.8, ls=":")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("flip")
    for row in axes:
        row[0].set_ylabel("leakage into Male (mean |dP|)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path) -> None:
    """The markdown page, its plot and its raw JSON beside it; a hand-written `## Account` is kept."""
    write_text(out.with_suffix(".json"), json.dumps(results, indent=1) + "\n")
    plot(results, out.with_suffix(".png"))
    write_text(out, render(results, out) + "\n" + kept_account(out, ACCOUNT_PROMPT))


def render(results: dict, out: Path) -> str:
    fmt = lambda v: "-" if v != v else f"{v:.3f}"  # noqa: E731  (NaN: outside the method's measured flips)
    probe = results["probe"]
    lines = ["# A non-linear hold: an MLP probe of the latent against the linear edit\n",
             f"Written by `python -m experiments latent-walk --model {results['model']} --out {out}` "
             f"({results['minutes']:.0f} min); raw numbers: [{out.with_suffix('.json').name}]"
             f"({out.with_suffix('.json').name}). The methods are described in the module's docstring "
             "(experiments/latent_walk.py).\n",
             f"## The probe\n\nAn MLP on the {probe['level']}, fitted on {probe['fit_faces']} training faces; "
             f"held-out AUC on {probe['val_faces']} more, against a logistic regression on the same split:\n",
             "| attribute | probe | linear |", "|---|---|---|"]
    shown = [a for a in ("Male", "Young", "Smiling", "No_Beard", "Eyeglasses", "Pale_Skin", "Heavy_Makeup",
                         "Gray_Hair") if a in probe["auc"]]
    lines += [f"| {a} | {probe['auc'][a]['probe']:.3f} | {probe['auc'][a]['linear']:.3f} |" for a in shown]
    lines += ["", f"## Leakage at equal flip\n\n{results['faces']} report faces. For each slider, the shipped edit's "
              f"flip at +1, and each method's leakage in the issue's lines where its own curve reaches that flip, "
              f"then where it reaches the issue's {TARGET_FLIP:.0%}:\n",
              "| slider | flip of the shipped +1 | line | " + " | ".join(METHODS) + " | "
              + " | ".join(f"{m}, at {TARGET_FLIP:.0%}" for m in METHODS) + " |",
              "|---|---|---|" + "---|" * 2 * len(METHODS)]
    for c in comparisons(results):
        for a in c["lines"]:
            lines.append(f"| {c['slider']} | {c['flip']:.0%} | {a} | "
                         + " | ".join(fmt(c["leak"][m][a]) for m in METHODS) + " | "
                         + " | ".join(fmt(c["leak_at_target"][m][a]) for m in METHODS) + " |")
    lines += ["", f"![leakage into Male against flip]({out.with_suffix('.png').name})\n",
              "## Every measurement\n", "| slider | held | strength | method | flip | moved | "
              + " | ".join(LEAK_ATTRIBUTES) + " | pixel change | not decoded |",
              "|---|---|---|---|---|---|" + "---|" * len(LEAK_ATTRIBUTES) + "---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['slider']} | {', '.join(r['held']) or '-'} | {r['strength']:g} | {r['method']} | "
                     f"{r['flip']:.0%} | {r['moved']:.0%} | "
                     + " | ".join(fmt(r["leakage"].get(a, float("nan"))) for a in LEAK_ATTRIBUTES)
                     + f" | {r['pixel']:.1f} | {r['undecoded']:.0%} |")
    return "\n".join(lines) + "\n"

"""An attribute classifier for model-size face crops: the instrument that measures what an edit did.

A small CNN trained on the Glow model's *training* faces for the 40 CelebA attributes, kept apart from the attribute
directions (a different model on pixels, not latents), so it can score edits the directions made. It reads images
at the model's bit depth (default 5 bits), the form every reconstruction, edit and sample of the model has.
Weights are safetensors + a JSON config; nothing is ever unpickled.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from flow_model.fileio import save_safetensors, write_text
from flow_model.glow import reduce_bits

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "CARD.md"
KIND = "attribute_classifier"
ENSEMBLE_KIND = "attribute_classifier_ensemble"


@dataclass
class ClassifierConfig:
    attributes: list[str]
    image_size: int = 64
    n_bits: int = 5  # inputs are reduced to this depth first (edits, reconstructions and samples are 5-bit)
    widths: list[int] = field(default_factory=lambda: [32, 64, 128, 192])
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if not self.attributes:
            raise ValueError("a classifier needs at least one attribute")
        if len(set(self.attributes)) != len(self.attributes):
            raise ValueError("attribute names must be unique")
        if not 1 <= self.n_bits <= 8 or self.image_size < 8 or not self.widths or min(self.widths) < 1:
            raise ValueError(f"bad classifier config: n_bits {self.n_bits}, image_size {self.image_size}, "
                             f"widths {self.widths}")

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def to_dict(self) -> dict:
        return {"kind": KIND, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "ClassifierConfig":
        d = dict(d)
        if d.pop("kind", KIND) != KIND:
            raise ValueError("not an attribute classifier config")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown classifier config fields {unknown}")
        return cls(**d)


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class AttributeClassifier(nn.Module):
    """uint8 faces (N, 3, S, S) -> per-attribute logits; `features` is the pooled penultimate layer (for the
    Frechet distance). Each stage halves the resolution and, after the first, refines it once."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        layers, c = [], 3
        for i, w in enumerate(config.widths):
            layers += [_block(c, w, 2)] + ([_block(w, w, 1)] if i else [])  # no refinement at full-ish size
            c = w
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(c, len(config.attributes))

    @property
    def attributes(self) -> list[str]:
        return list(self.config.attributes)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        s = self.config.image_size
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4 \
                or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"expected uint8 images (N, 3, {s}, {s}), got "
                             f"{getattr(images, 'dtype', type(images))} {tuple(getattr(images, 'shape', ()))}")
        x = reduce_bits(images, self.config.n_bits).float() / 127.5 - 1.0
        return x.contiguous(memory_format=torch.channels_last)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.prepare(images.to(self.head.weight.device))).mean((2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(images)))

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """P(attribute) (N, A) and features (N, F) in eval mode, as float64 on the CPU."""
        was = self.training
        self.eval()
        probs, feats = [], []
        for i in range(0, len(images), batch_size):
            f = self.features(images[i:i + batch_size])
            probs.append(torch.sigmoid(self.head(f)).double().cpu())
            feats.append(f.double().cpu())
        self.train(was)
        if not probs:
            return torch.zeros(0, len(self.attributes), dtype=torch.float64), \
                torch.zeros(0, self.config.feature_dim, dtype=torch.float64)
        return torch.cat(probs), torch.cat(feats)

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images)[0]

    # -- files ----------------------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path, metrics: dict | None = None) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v for k, v in self.state_dict().items() if not k.endswith("num_batches_tracked")}
        save_safetensors(state, path / WEIGHTS_NAME, metadata={"format": "pt", "kind": KIND})
        doc = self.config.to_dict()
        if metrics is not None:
            doc["metrics"] = metrics
        write_text(path / CONFIG_NAME, json.dumps(doc, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "AttributeClassifier":
        """Strict load from config.json + model.safetensors; a missing, corrupt or mismatched file is a
        ValueError (FileNotFoundError when absent) that names the file."""
        path = Path(path)
        cfg_file, weights = path / CONFIG_NAME, path / WEIGHTS_NAME
        if not cfg_file.is_file() or not weights.is_file():
            raise FileNotFoundError(f"{path} is not an attribute classifier directory (needs {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME})")
        try:
            doc = json.loads(cfg_file.read_text())
            doc.pop("metrics", None)
            config = ClassifierConfig.from_dict(doc)
        except (OSError, ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"{cfg_file} is not an attribute classifier config: {err}") from None
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"cannot read classifier weights {weights}: {err}") from None
        model = cls(config)
        own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            raise ValueError(f"{weights} does not match {cfg_file}: missing {missing[:4]}, unexpected "
                             f"{unexpected[:4]}, wrong shape {wrong[:4]}")
        bad = sorted(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
        if bad:
            raise ValueError(f"{weights} holds non-finite values in {bad[:4]}")
        model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
        return model.to(device).eval()


def _folder_name(name: object) -> bool:
    """A plain folder name inside the ensemble's directory: no path separators, no way out of it."""
    return isinstance(name, str) and name not in ("", ".", "..") and not set(name) & set("/\\")


class ClassifierEnsemble(nn.Module):
    """Classifiers trained alike from different seeds, read as one instrument: the mean of their probabilities.
    One net's reading of an edit moves with its seed by as much as some of the margins the sliders are judged by
    (experiments/instruments.md); the mean of several moves less. Features are the first member's: the Frechet
    distance needs one feature space."""

    def __init__(self, members: list[AttributeClassifier]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        first = members[0].config
        odd = [i for i, m in enumerate(members) if (m.config.attributes, m.config.image_size, m.config.n_bits)
               != (first.attributes, first.image_size, first.n_bits)]
        if odd:
            raise ValueError(f"ensemble members {odd} read other attributes, image sizes or bit depths than member 0")
        self.members = nn.ModuleList(members)

    @property
    def config(self) -> ClassifierConfig:
        return self.members[0].config

    @property
    def attributes(self) -> list[str]:
        return self.members[0].attributes

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """The members' mean P(attribute) (N, A) and the first member's features (N, F), float64 on the CPU."""
        probs, features = self.members[0].predict(images, batch_size)
        for m in self.members[1:]:
            probs = probs + m.predict(images, batch_size)[0]
        return probs / len(self.members), features

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        return self.predict(images)[0]

    def save_pretrained(self, path: str | Path, metrics: dict | None = None) -> None:
        """Each member in its own classifier directory (member_0, ...; loadable alone), and config.json naming
        them."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        names = [f"member_{i}" for i in range(len(self.members))]
        for name, member in zip(names, self.members):
            member.save_pretrained(path / name)
        doc = {"kind": ENSEMBLE_KIND, "members": names, **({"metrics": metrics} if metrics is not None else {})}
        write_text(path / CONFIG_NAME, json.dumps(doc, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> "ClassifierEnsemble":
        path = Path(path)
        try:
            doc = json.loads((path / CONFIG_NAME).read_text())
            names = doc["members"]
            if doc.get("kind") != ENSEMBLE_KIND or not isinstance(names, list) or len(names) < 2 or not all(
                    map(_folder_name, names)):
                raise ValueError("not a classifier ensemble config with a list of two or more member folders")
        except FileNotFoundError:
            raise
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path / CONFIG_NAME} is not a classifier ensemble config: {err}") from None
        return cls([AttributeClassifier.from_pretrained(path / n, device) for n in names]).eval()


Instrument = AttributeClassifier | ClassifierEnsemble


def load_instrument(path: str | Path, device: str | torch.device = "cpu") -> Instrument:
    """The classifier or ensemble in `path` (its config.json says which), with the loaders' errors."""
    try:
        kind = json.loads((Path(path) / CONFIG_NAME).read_text()).get("kind")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not an attribute classifier directory (needs {CONFIG_NAME})") from None
    except (OSError, ValueError, AttributeError) as err:
        raise ValueError(f"{Path(path) / CONFIG_NAME} is not an attribute classifier config: {err}") from None
    if kind == ENSEMBLE_KIND:
        return ClassifierEnsemble.from_pretrained(path, device)
    return AttributeClassifier.from_pretrained(path, device)


def instrument_fingerprint(path: str | Path) -> str:
    """A short hash of the weights of the classifier or ensemble in `path` (every .safetensors under it, by relative
    path): what a calibration records so that a page can tell whether the instrument measuring it now is the one
    that calibrated, where the folder's name stays the same."""
    path = Path(path)
    digest = hashlib.sha256()
    for f in sorted(path.rglob("*.safetensors")):
        digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(f.read_bytes()).digest())
    return digest.hexdigest()[:16]


def load_metrics(path: str | Path) -> dict:
    return json.loads((Path(path) / CONFIG_NAME).read_text()).get("metrics", {})


# -- training ---------------------------------------------------------------------------------------------
@dataclass
class Balance:
    """Which attribute heads learn from reweighted faces, so that the instrument reads them apart from the
    attributes the editor edits. CelebA ties gender to glasses, blond hair and age (79% of its glasses-wearers are
    men, against 37% of the rest), so a classifier fitted plainly reads glasses as evidence of a man and scores a
    perfect glasses edit as moving gender; each head here is trained on weights under which its label is
    independent of each `against` label (raking: every (head, other) table of weighted counts is made the product
    of its margins). A pair with fewer than `min_cell` faces in a cell (bearded women, made-up men) carries no
    such faces to reweight and is left out; weights are clipped to [1 / clip, clip]."""

    heads: tuple[str, ...] = ()
    against: tuple[str, ...] = ()
    clip: float = 10.0
    min_cell: int = 100
    rounds: int = 50

    def __post_init__(self) -> None:
        self.heads, self.against = tuple(self.heads), tuple(self.against)
        if not self.clip > 1 or self.min_cell < 1 or self.rounds < 1:
            raise ValueError(f"need clip > 1, min_cell >= 1 and rounds >= 1; got {self.clip}, {self.min_cell}, "
                             f"{self.rounds}")

    def check(self, attributes: list[str]) -> None:
        missing = sorted(set(self.heads + self.against) - set(attributes), key=str)
        if missing:
            raise ValueError(f"cannot balance unknown attributes {missing}; the labels have {attributes}")


def balancing_weights(labels: np.ndarray, attributes: list[str], balance: Balance) -> tuple[np.ndarray, dict]:
    """(N, A) loss weights (1 for the heads not balanced, mean 1 per balanced head) and per balanced head what was
    balanced: the attributes it was made independent of, those left out and why, the effective sample share
    (Kish) and the largest weighted difference left between P(head | other) and P(head | not other)."""
    balance.check(attributes)
    y_all = np.asarray(labels) > 0
    weights, info = np.ones(y_all.shape, dtype=np.float32), {}
    for head in balance.heads:
        y = y_all[:, attributes.index(head)]
        others, skipped = [], {}
        for a in balance.against:
            if a == head:
                continue
            z = y_all[:, attributes.index(a)]
            fewest = min(int(((y == u) & (z == v)).sum()) for u in (False, True) for v in (False, True))
            if fewest < balance.min_cell:
                skipped[a] = f"a cell of {fewest} faces"
            else:
                others.append(z)
        w = np.ones(len(y))
        for _ in range(balance.rounds):
            for z in others:
                p_y, p_z = np.average(y, weights=w), np.average(z, weights=w)
                for u, pu in ((True, p_y), (False, 1 - p_y)):
                    for v, pv in ((True, p_z), (False, 1 - p_z)):
                        cell = (y == u) & (z == v)
                        w[cell] *= pu * pv * w.sum() / w[cell].sum()
                w = np.clip(w, 1 / balance.clip, balance.clip)
        w /= w.mean()
        gaps = [abs(np.average(y[z], weights=w[z]) - np.average(y[~z], weights=w[~z])) for z in others]
        weights[:, attributes.index(head)] = w
        info[head] = {"against": [a for a in balance.against if a != head and a not in skipped], "skipped": skipped,
                      "effective_share": float(w.sum() ** 2 / (w ** 2).sum() / len(w)),
                      "largest_gap": float(max(gaps, default=0.0))}
    return weights, info


@dataclass
class TrainSettings:
    epochs: int = 4
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 5e-4
    seed: int = 0
    max_minutes: float | None = None


def train_classifier(images: torch.Tensor, labels: np.ndarray, config: ClassifierConfig,
                     settings: TrainSettings = TrainSettings(), log_every: int = 50,
                     weights: np.ndarray | None = None) -> tuple[AttributeClassifier, dict]:
    """Fit on uint8 images (N, 3, S, S) with +1/-1 (or 1/0) labels (N, A): AdamW, one-cycle cosine schedule,
    random horizontal flips, binary cross-entropy per attribute, each term weighted by `weights` (N, A) where given
    (balancing_weights). Returns the model (eval mode) and a log."""
    if len(images) != len(labels) or labels.shape[1] != len(config.attributes):
        raise ValueError(f"{len(images)} images, labels {labels.shape}, {len(config.attributes)} attributes")
    if weights is not None and (weights.shape != labels.shape or not np.isfinite(weights).all() or (weights < 0).any()):
        raise ValueError(f"loss weights must be finite, >= 0 and shaped like the labels {labels.shape}")
    w_all = None if weights is None else torch.from_numpy(np.asarray(weights, dtype=np.float32))
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model = AttributeClassifier(config).to(memory_format=torch.channels_last)
    y_all = torch.from_numpy((np.asarray(labels) > 0).astype(np.float32))
    steps_per_epoch = max(1, len(images) // settings.batch_size)
    total = steps_per_epoch * settings.epochs
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings.lr, total_steps=total, pct_start=0.15)
    started, step, losses = time.perf_counter(), 0, []
    model.train()
    stop = False
    for epoch in range(settings.epochs):
        order = torch.randperm(len(images), generator=gen)
        for b in range(steps_per_epoch):
            idx = order[b * settings.batch_size:(b + 1) * settings.batch_size]
            x = images[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = F.binary_cross_entropy_with_logits(model(x), y_all[idx],
                                                      weight=None if w_all is None else w_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            if log_every and step % log_every == 0:
                log.info("epoch %d step %d/%d loss %.4f (%.0f s)", epoch, step, total,
                         float(np.mean(losses[-log_every:])), time.perf_counter() - started)
            if settings.max_minutes is not None and time.perf_counter() - started > 60 * settings.max_minutes:
                stop = True
                break
        if stop:
            break
    model.eval()
    return model, {"steps": step, "epochs": step / steps_per_epoch, "seconds": time.perf_counter() - started,
                   "final_loss": float(np.mean(losses[-50:])) if losses else math.nan}


def accuracy_table(probs: torch.Tensor, labels: np.ndarray, attributes: list[str]) -> dict[str, dict]:
    """Per attribute: accuracy at 0.5, balanced accuracy, share positive, n."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels) > 0
    p = probs.numpy()
    out = {}
    for j, name in enumerate(attributes):
        pred = p[:, j] >= 0.5
        pos, neg = y[:, j], ~y[:, j]
        tpr = float(pred[pos].mean()) if pos.any() else math.nan
        tnr = float((~pred[neg]).mean()) if neg.any() else math.nan
        auc = float(roc_auc_score(y[:, j], p[:, j])) if pos.any() and neg.any() else math.nan
        out[name] = {"accuracy": float((pred == y[:, j]).mean()), "balanced_accuracy": float(np.nanmean([tpr, tnr])),
                     "auc": auc, "positive_share": float(pos.mean()), "majority_accuracy": float(max(pos.mean(),
                                                                                                  neg.mean()))}
    return out


def card_markdown(metrics: dict, config: ClassifierConfig, train_info: dict, n_params: int) -> str:
    acc = metrics["validation"]
    rows = "\n".join(f"| {a} | {m['accuracy']:.3f} | {m['majority_accuracy']:.3f} | {m['balanced_accuracy']:.3f} | "
                     f"{m['auc']:.3f} | {m['positive_share']:.2f} |" for a, m in acc.items())
    mean_acc = np.mean([m["accuracy"] for m in acc.values()])
    mean_auc = np.nanmean([m["auc"] for m in acc.values()])
    balanced = metrics.get("balance", {}).get("heads_info", {})
    balance = "".join(
        f"\n- **{head} reads apart from the edited attributes:** its loss is reweighted so that in the weighted "
        f"training faces it is independent of {', '.join(b['against'])} (largest difference left "
        f"{b['largest_gap']:.3f}; an effective {b['effective_share']:.0%} of the faces)"
        + (f"; not of {', '.join(f'{a} ({why})' for a, why in b['skipped'].items())}, too rare together with it "
           f"to reweight" if b["skipped"] else "") + "." for head, b in balanced.items())
    if balanced:
        balance += ("\n  CelebA ties these to one another (most glasses-wearers are men, most blond faces women's); "
                    "a plainly fitted head learns the tie and scores an edit that adds glasses as moving gender "
                    "(`Balance` in app/classifier.py).")
    members = metrics.get("members", [])
    ensemble = ""
    files = ("`config.json` (attributes, shape, these metrics), `model.safetensors` (weights). Load with\n"
             "  `app.classifier.load_instrument(dir)`")
    if members:
        accs = [m["mean_accuracy"] for m in members]
        ensemble = (f"\n- **An ensemble of {len(members)}:** trained alike from seeds "
                    f"{', '.join(str(m['seed']) for m in members)} and read as one instrument, the mean of their "
                    f"probabilities (one net's verdicts on an edit move with its seed: experiments/instruments.md); "
                    f"the members' own mean accuracies are {min(accs):.3f}-{max(accs):.3f}, the table below is "
                    f"the ensemble's.")
        files = (f"`config.json` (the member folders, these metrics) and one classifier folder per member "
                 f"(`member_0/` ... `member_{len(members) - 1}/`: its `config.json` and `model.safetensors`). Load "
                 f"with\n  `app.classifier.load_instrument(dir)`")
    per_member = " for the first member" if members else ""
    planned = metrics.get("planned_epochs")
    stopped = (f" (planned over {planned} epochs; `--max-minutes` stopped it at "
               f"{train_info['epochs'] / planned:.0%} of the schedule)" if planned and train_info["epochs"] < planned
               else "")
    return f"""# Attribute classifier (CelebA, {config.image_size}x{config.image_size}, {config.n_bits}-bit input)

An instrument for measuring the editor's edits (`python -m app evaluate-edits`), kept apart from the attribute
directions: a small CNN on pixels ({n_params:,} parameters; stages of widths {config.widths}, each a stride-2 3x3 conv and (after the first)
a stride-1 one, with BatchNorm and ReLU, global average pooling -> {config.feature_dim} features -> 40 logits),
where the directions are linear in the Glow model's latents.

- **Training data:** the {metrics['n_train']:,} faces of the shipped Glow model's training split
  (`assets/celeba64/split.json`, both `img_align_celeba/` and `img_align_celeba_extra/`), CelebA crop, reduced to
  {config.n_bits} bits like every image the model decodes; random horizontal flips.{balance}{ensemble}
- **Training:** {train_info['epochs']:.1f} epochs, {train_info['steps']} steps of batch {metrics['batch_size']},
  AdamW, one-cycle cosine learning rate{stopped}; {train_info['seconds'] / 60:.1f} minutes{per_member} on
  {metrics.get('threads', 1)} CPU thread(s) of a shared 2-core VM (`python -m app train-classifier`).
- **Held out:** the {metrics['n_val']} validation faces of the same split, which neither the Glow model, the
  directions nor this classifier trained on. Mean accuracy **{mean_acc:.3f}**, mean AUC **{mean_auc:.3f}**.
- **Files:** {files}; nothing is unpickled.
- **Reading it:** accuracy at the 0.5 threshold is close to the majority class for rare attributes (Bald,
  Blurry, Chubby, Double_Chin: the classifier rarely says P > 0.5 for them) while their AUC is high, so it ranks
  faces well but is conservative at 0.5: a flip rate (crossing 0.5) for such attributes understates the edit.
- **Limits:** CelebA labels are noisy (Narrow_Eyes, Oval_Face, Pointy_Nose, Big_Lips are close to coin flips even
  for large models); rare attributes (Bald, Gray_Hair, Mustache) are read with low recall, so their flip rates
  in docs/edits.md are conservative. Scores on edited faces measure what this classifier sees, which is not
  the same as what a person sees.

| attribute | accuracy | majority-class accuracy | balanced accuracy | AUC | share positive |
|---|---|---|---|---|---|
{rows}
"""


# -- what the user sees ----------------------------------------------------------------------------------------
def describe_change(classifier: Instrument, before: torch.Tensor, after: torch.Tensor,
                    edited: dict[str, float], leak_floor: float = 0.05,
                    before_probs: torch.Tensor | None = None) -> dict:
    """The classifier's reading of one face before and after an edit.

    `edited` maps each edited attribute to the intended direction (+1 / -1). Returns {"edited": [(attribute,
    P before, P after)], "leak": (attribute, P before, P after) of the largest change among the other attributes,
    "text": e.g. "Smiling 12% -> 81%; largest other change: Male 40% -> 52%"}. A leak below leak_floor is not
    named. `before_probs`: the classifier's (A,) reading of `before` where the caller already has it."""
    if before_probs is None:
        probs, _ = classifier.predict(torch.stack([before, after]))
    else:
        probs = torch.stack([before_probs.double(), classifier.predict(after[None])[0][0]])
    names = classifier.attributes
    rows = [(a, float(probs[0, names.index(a)]), float(probs[1, names.index(a)])) for a in edited if a in names]
    others = [j for j, a in enumerate(names) if a not in edited]
    leak = None
    if others:
        delta = (probs[1, others] - probs[0, others]).abs()
        j = others[int(delta.argmax())]
        leak = (names[j], float(probs[0, j]), float(probs[1, j]))
    parts = [f"{a.replace('_', ' ')} {p0:.0%} -> {p1:.0%}" for a, p0, p1 in rows]
    if leak is not None and abs(leak[2] - leak[1]) >= leak_floor:
        parts.append(f"largest other change: {leak[0].replace('_', ' ')} {leak[1]:.0%} -> {leak[2]:.0%}")
    elif leak is not None:
        parts.append(f"no other attribute moved by {leak_floor:.0%} or more")
    return {"edited": rows, "leak": leak, "text": "; ".join(parts)}


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Instrument | None:
    """The classifier (or ensemble) in `path`, or None (with a warning) when it cannot be read: the editor works
    without it."""
    try:
        return load_instrument(path, device)
    except (OSError, ValueError) as err:
        log.warning("attribute classifier not loaded: %s", err)
        return None

"""Attribute directions in the flat standardised latent space (Glow paper, Figure 6), their file format and loader.

Two directions per attribute: the difference of class means (the paper's method) and the normal of a class-balanced
linear classifier. Both are calibrated so that adding 1x the vector moves a face by the typical gap between the
classes along it, which is what an editor slider at +1 should mean.

For the attributes an edit is most often held fixed by (gender, age, smile), the file also carries each one's linear
nullspace basis (INLP): holding an attribute by its one classifier normal keeps that read-out's score, but an edit
can still move the other linear read-outs of the same attribute, and the attribute classifier sees them.

A third, per-face method: the class-mean difference taken within each gender, men's for a face the latent reads as a
man's, women's for a woman's (mixed by that reading). CelebA pairs some attributes with one gender (age and beards
with men, blond hair and make-up with women), so a difference over all faces carries a gender gap that holding Male
removes only as far as a linear read-out sees it; one taken among men only or women only carries none
(experiments/conditional_edits.md).
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from flow_model.fileio import save_safetensors

log = logging.getLogger(__name__)

METHODS = ("mean_diff", "classifier")
WITHIN_GENDER = "within_gender"  # per face: the mean difference among faces of the face's own gender
WITHIN_PREFIX = "within_gender_"  # + "pos" (faces with the gender attribute: men for Male) or "neg"


def own_hold(method: str) -> str:
    """The directions an edit by `method` holds its kept attributes by unless told otherwise: the same method's, or
    for WITHIN_GENDER, whose directions differ from face to face, the mean differences (one subspace for every
    face)."""
    return "mean_diff" if method == WITHIN_GENDER else method
NULLSPACE = "nullspace"  # a way to hold an attribute fixed: by its whole INLP basis rather than one direction
NULLSPACE_PREFIX = "nullspace_"  # the file's tensor of an attribute's basis: this prefix + the attribute's name
LATENT_KIND = "standardized"
FORMAT_VERSION = "1"


@dataclass
class DirectionConfig:
    """How the classifier directions are fitted; stored in the file so a result can be reproduced."""

    val_fraction: float = 0.2
    seed: int = 0
    min_count: int = 10  # positives and negatives needed in the train split to fit a classifier
    # sklearn's C (loss summed over images): 1e-4 was best among 1e-5..1e-3 for ~11k train images of 12k dims,
    # and converges in ~30-70 L-BFGS iterations
    C: float = 1e-4
    max_iter: int = 300
    tol: float = 1e-3
    # attributes that get a nullspace basis (those absent from the labels are skipped), at most this many normals
    # past the classifier's, each added only while its held-out AUC shows linear information left
    nullspace: tuple[str, ...] = ("Male", "Young", "Smiling")
    nullspace_rounds: int = 4
    nullspace_min_auc: float = 0.55
    # the attribute whose two groups the within-gender differences are taken in (None or absent: none are); a group
    # with fewer than gender_min_count faces on a side of an attribute takes the other group's difference
    gender: str | None = "Male"
    gender_min_count: int = 40

    def __post_init__(self) -> None:
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")
        if not self.C > 0 or self.max_iter < 1 or not self.tol > 0:
            raise ValueError(f"need C > 0, max_iter >= 1 and tol > 0; got C={self.C}, max_iter={self.max_iter}, "
                             f"tol={self.tol}")
        if self.gender_min_count < 1:
            raise ValueError(f"gender_min_count must be >= 1, got {self.gender_min_count}")
        if self.nullspace_rounds < 0 or not 0.5 <= self.nullspace_min_auc < 1:
            raise ValueError(f"need nullspace_rounds >= 0 and nullspace_min_auc in [0.5, 1); got "
                             f"{self.nullspace_rounds} and {self.nullspace_min_auc}")
        self.nullspace = tuple(self.nullspace)


@dataclass
class Directions:
    """Per-attribute edit vectors for both methods, their cosine Gram matrices, fit statistics and, for some
    attributes, the orthonormal (k, D) nullspace basis whose first row is the classifier normal's direction; where
    fitted, the within-gender differences ("pos": among faces with the gender attribute, "neg": without) and the
    gender reader that mixes them per face (`gender_reader`: the gender attribute, and the coefficient and intercept
    of a logistic regression on the projection onto its classifier normal's direction)."""

    names: list[str]
    vectors: dict[str, torch.Tensor]
    gram: dict[str, torch.Tensor]
    info: dict[str, dict]
    latent_dim: int
    model_config: dict | None = None
    config: dict = field(default_factory=dict)
    nullspaces: dict[str, torch.Tensor] = field(default_factory=dict)
    within_gender: dict[str, torch.Tensor] = field(default_factory=dict)
    gender_reader: dict | None = None

    @property
    def methods(self) -> tuple[str, ...]:
        """The direction methods this file can edit by."""
        return (*METHODS, WITHIN_GENDER) if self.within_gender else METHODS

    def methods_for(self, name: str) -> tuple[str, ...]:
        """The methods that give attribute `name` a direction of its own: WITHIN_GENDER only where its groups'
        differences were fitted (not the plain mean difference, as for the gender attribute itself)."""
        fitted = not self.info.get(name, {}).get("within_gender", {}).get("fallback", True)
        return self.methods if self.within_gender and fitted else METHODS

    def vector(self, name: str, method: str = "classifier", latent: torch.Tensor | None = None) -> torch.Tensor:
        """The (D,) edit vector of an attribute; WITHIN_GENDER depends on the face: (D,) for one latent `latent`,
        (N, D) for a batch."""
        if method not in self.methods:
            raise KeyError(f"unknown direction method {method!r}; valid: {list(self.methods)}"
                           + (" (this directions file has no within-gender differences: refit it with `python -m "
                              "app directions`)" if method == WITHIN_GENDER else ""))
        if name not in self.names:
            raise KeyError(f"unknown attribute {name!r}; valid: {self.names}")
        j = self.names.index(name)
        if method != WITHIN_GENDER:
            return self.vectors[method][j]
        if latent is None:
            raise ValueError("a within-gender direction depends on the face: pass its latent")
        p = self.p_gender(latent)[..., None]
        return p * self.within_gender["pos"][j] + (1 - p) * self.within_gender["neg"][j]

    def p_gender(self, latent: torch.Tensor) -> torch.Tensor:
        """How strongly each latent (D,) or (N, D) reads as the gender attribute's positive group, in [0, 1]."""
        if self.gender_reader is None:
            raise ValueError("this directions file has no gender reader")
        unit = self.vector(self.gender_reader["attribute"], "classifier")
        unit = unit / unit.norm()
        return torch.sigmoid(self.gender_reader["coef"] * (latent.float() @ unit) + self.gender_reader["intercept"])

    def held(self, name: str, method: str) -> torch.Tensor:
        """The (k, D) directions an edit is made orthogonal to so as to hold `name` fixed: its direction by
        `method` (own_hold: WITHIN_GENDER holds by the mean difference), or under NULLSPACE its nullspace basis (its
        classifier normal where the file has none)."""
        if method != NULLSPACE:
            return self.vector(name, own_hold(method))[None]
        basis = self.nullspaces.get(name)
        return basis if basis is not None else self.vector(name, "classifier")[None]

    def save(self, path: str | Path) -> None:
        for m in METHODS:
            v, g = self.vectors.get(m), self.gram.get(m)
            if v is None or g is None:
                raise ValueError(f"cannot save directions without {m!r} vectors and gram matrix")
            if tuple(v.shape) != (len(self.names), self.latent_dim) or tuple(g.shape) != (len(self.names),) * 2:
                raise ValueError(f"{m} vectors {tuple(v.shape)} / gram {tuple(g.shape)} do not fit "
                                 f"{len(self.names)} attributes of a {self.latent_dim}-value latent")
            if not torch.isfinite(v).all():
                raise ValueError(f"the {m} vectors hold non-finite values")
        for name, basis in self.nullspaces.items():
            _check_basis(name, basis, self.names, self.latent_dim)
        tensors = {m: self.vectors[m].float() for m in METHODS}
        tensors.update({f"gram_{m}": self.gram[m].float() for m in METHODS})
        tensors.update({NULLSPACE_PREFIX + name: basis.float().contiguous() for name, basis in self.nullspaces.items()})
        if self.within_gender:
            _check_within(self.within_gender, self.gender_reader, self.names, self.latent_dim)
            tensors.update({WITHIN_PREFIX + k: v.float().contiguous() for k, v in self.within_gender.items()})
        metadata = {
            "format": FORMAT_VERSION,
            "attributes": json.dumps(self.names),
            "info": json.dumps(self.info),
            "latent": LATENT_KIND,
            "model_config": json.dumps(self.model_config),
            "latent_dim": str(self.latent_dim),
            "config": json.dumps(self.config),
        }
        if self.within_gender:
            metadata["gender_reader"] = json.dumps(self.gender_reader)
        save_safetensors(tensors, path, metadata=metadata)


def _check_within(within: dict[str, torch.Tensor], reader, names: list[str], latent_dim: int) -> None:
    """Within-gender differences come as both groups' (n_attributes, D) finite tensors with a gender reader whose
    attribute is one of the names and whose coefficients are finite numbers."""
    if set(within) != {"pos", "neg"}:
        raise ValueError(f"within-gender differences need the groups 'pos' and 'neg', got {sorted(within)}")
    for k, v in within.items():
        if tuple(v.shape) != (len(names), latent_dim) or not torch.isfinite(v).all():
            raise ValueError(f"the within-gender differences ({k}) have shape {tuple(v.shape)} or non-finite values; "
                             f"expected finite ({len(names)}, {latent_dim})")
    ok = (isinstance(reader, dict) and reader.get("attribute") in names
          and all(isinstance(reader.get(k), (int, float)) and not isinstance(reader.get(k), bool)
                  and math.isfinite(reader[k]) for k in ("coef", "intercept")))
    if not ok:
        raise ValueError(f"the gender reader must name one of the attributes and give finite coef and intercept, "
                         f"got {reader!r}")


def _check_basis(name: str, basis: torch.Tensor, names: list[str], latent_dim: int) -> None:
    """A nullspace basis must belong to a known attribute and have orthonormal rows of the latent's size."""
    if name not in names:
        raise ValueError(f"a nullspace basis for {name!r}, which is not one of the attributes")
    if basis.ndim != 2 or not 1 <= basis.shape[0] <= latent_dim or basis.shape[1] != latent_dim:
        raise ValueError(f"the nullspace basis of {name} has shape {tuple(basis.shape)}; expected (k, {latent_dim})")
    gram = basis.double() @ basis.double().T
    if not torch.isfinite(gram).all() or not torch.allclose(gram, torch.eye(len(basis), dtype=gram.dtype), atol=1e-3):
        raise ValueError(f"the nullspace basis of {name} does not have orthonormal rows")


def load_directions(path: str | Path) -> Directions:
    """Read a directions file, checking that every tensor and metadata entry is there and consistent."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"directions file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            keys = set(f.keys())
            wanted = [*METHODS, *(f"gram_{m}" for m in METHODS)]
            missing = [k for k in wanted if k not in keys]
            if missing:
                raise ValueError(f"{path} is not a complete directions file: missing tensors {missing}")
            tensors = {k: f.get_tensor(k) for k in wanted}
            nullspaces = {k[len(NULLSPACE_PREFIX):]: f.get_tensor(k) for k in keys if k.startswith(NULLSPACE_PREFIX)}
            within = {k[len(WITHIN_PREFIX):]: f.get_tensor(k) for k in keys if k.startswith(WITHIN_PREFIX)}
    except SafetensorError as err:
        raise ValueError(f"{path} is not a readable directions file (corrupt or not safetensors): {err}") from None
    missing = [k for k in ("attributes", "info", "latent", "latent_dim") if k not in meta]
    if missing:
        raise ValueError(f"{path} is not a complete directions file: missing metadata {missing}")
    if meta["latent"] != LATENT_KIND:
        raise ValueError(f"{path} holds directions for {meta['latent']!r} latents; expected {LATENT_KIND!r}")
    try:
        names = json.loads(meta["attributes"])
        info = json.loads(meta["info"])
        model_config = json.loads(meta.get("model_config", "null"))
        config = json.loads(meta.get("config", "{}"))
        latent_dim = int(meta["latent_dim"])
        reader = json.loads(meta["gender_reader"]) if "gender_reader" in meta else None
    except ValueError as err:
        raise ValueError(f"{path} has malformed metadata: {err}") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or not isinstance(info, dict):
        raise ValueError(f"{path} has malformed metadata: attributes must be a list of names and info an object")
    n = len(names)
    for m in METHODS:
        v, g = tensors[m], tensors[f"gram_{m}"]
        if tuple(v.shape) != (n, latent_dim) or tuple(g.shape) != (n, n):
            raise ValueError(f"{path}: {m} has shape {tuple(v.shape)} and gram {tuple(g.shape)}; "
                             f"expected ({n}, {latent_dim}) and ({n}, {n}) for {n} attributes")
        if not torch.isfinite(v).all():
            raise ValueError(f"{path}: the {m} vectors hold non-finite values")
    if set(info) != set(names):
        raise ValueError(f"{path}: info does not describe the same attributes as the tensors")
    try:
        for name, basis in nullspaces.items():
            _check_basis(name, basis, names, latent_dim)
        if within or reader is not None:
            _check_within(within, reader, names, latent_dim)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    return Directions(names, {m: tensors[m] for m in METHODS}, {m: tensors[f"gram_{m}"] for m in METHODS},
                      info, latent_dim, model_config, config, nullspaces, within, reader)


@torch.no_grad()
def encode_images(model, images: torch.Tensor, batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Exact flat standardised latents (N, D) float32 of uint8 images, all levels (Glow.encode's point)."""
    was_training = model.training
    model.eval()
    out = np.empty((len(images), model.latent_dim), dtype=np.float32)
    for start in tqdm(range(0, len(images), batch_size), desc="encoding", disable=not progress, unit="batch"):
        batch = images[start : start + batch_size]
        out[start : start + len(batch)] = model.flatten_latents(model.encode(batch, standardized=True)).cpu().numpy()
    model.train(was_training)
    return out


def cosine_gram(vectors: torch.Tensor) -> torch.Tensor:
    """Cosine similarities between rows; a zero row (no examples of a class) is orthogonal to everything."""
    v = vectors.double()
    unit = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (unit @ unit.T).float()


def _check_inputs(latents, labels: np.ndarray, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    x = latents.detach().cpu().numpy() if isinstance(latents, torch.Tensor) else np.asarray(latents)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"latents must be (N >= 2, D), got shape {x.shape}")
    if y.ndim != 2 or y.shape[0] != len(x):
        raise ValueError(f"labels must be (N={len(x)}, n_attributes), got shape {y.shape}")
    if len(names) != y.shape[1] or len(set(names)) != len(names):
        raise ValueError(f"need {y.shape[1]} distinct attribute names, got {len(names)} ({len(set(names))} distinct)")
    if not np.isin(y, (-1, 1)).all():
        raise ValueError("labels must be +1 (has the attribute) or -1 (has not)")
    if not np.isfinite(x).all():
        raise ValueError("latents hold non-finite values")
    return x, y > 0


def _class_means(x: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean difference (n_attr, D) for every attribute at once, and the class counts; zero where a class is empty."""
    p = pos.astype(np.float64)
    n_pos, n_neg = p.sum(0), (1 - p).sum(0)
    sum_all = x.sum(0, dtype=np.float64)
    sum_pos = (pos.T.astype(np.float32) @ x).astype(np.float64)
    ok = (n_pos > 0) & (n_neg > 0)
    diff = sum_pos / np.maximum(n_pos, 1)[:, None] - (sum_all - sum_pos) / np.maximum(n_neg, 1)[:, None]
    diff[~ok] = 0.0
    return diff, n_pos.astype(int), n_neg.astype(int)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The seeded (train, validation) index split compute_directions uses, for plotting held-out images."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(val_fraction * n))
    if n - n_val < 2:
        raise ValueError(f"{n} images leave no train split at val_fraction={val_fraction}")
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return float(roc_auc_score(y, score)) if 0 < y.sum() < len(y) else math.nan


def _fit_normal(features: np.ndarray, y: np.ndarray, scaler: StandardScaler,
                config: DirectionConfig) -> tuple[LogisticRegression, np.ndarray | None]:
    """The class-balanced logistic regression on standardised features, and its score's unit gradient with respect
    to the unscaled latent (None for a zero normal)."""
    clf = LogisticRegression(C=config.C, class_weight="balanced", max_iter=config.max_iter, tol=config.tol)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(features, y)
    w = clf.coef_[0].astype(np.float64) / scaler.scale_
    return clf, (w / np.linalg.norm(w) if np.linalg.norm(w) > 0 else None)


def nullspace_basis(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                    first: np.ndarray, config: DirectionConfig) -> tuple[np.ndarray, list[float]]:
    """Iterative nullspace projection (INLP, Ravfogel et al. 2020) from `first`, the normal the editor holds: fit
    the same classifier on the latents projected off the basis so far and add its normal, for up to
    nullspace_rounds rounds, while the fit's held-out AUC exceeds nullspace_min_auc (linear information left).
    Returns the orthonormal (k, D) basis, `first`'s direction first, and every round's held-out AUC."""
    basis = (first / np.linalg.norm(first))[None].astype(np.float32)
    aucs: list[float] = []
    for _ in range(config.nullspace_rounds):
        projected = x_train - (x_train @ basis.T) @ basis
        scaler = StandardScaler().fit(projected)
        clf, unit = _fit_normal(scaler.transform(projected), y_train, scaler, config)
        del projected
        held_out = x_val - (x_val @ basis.T) @ basis
        aucs.append(_auc(y_val, clf.decision_function(scaler.transform(held_out))))
        if unit is None or not aucs[-1] > config.nullspace_min_auc:
            break
        unit = unit - (unit @ basis.T.astype(np.float64)) @ basis.astype(np.float64)
        if not np.linalg.norm(unit) > 1e-6:
            break
        basis = np.vstack([basis, (unit / np.linalg.norm(unit))[None].astype(np.float32)])
    return basis, aucs


def compute_directions(latents: np.ndarray | torch.Tensor, labels: np.ndarray, names: list[str],
                       config: DirectionConfig | None = None, model_config: dict | None = None,
                       progress: bool = True) -> Directions:
    """Mean-difference and classifier directions for every attribute of labelled flat standardised latents.

    labels is (N, n_attr) of +1/-1. Mean differences use every image; the classifier is fitted on a seeded train
    split and scored on the rest, and the mean difference of the train split is scored on the same held-out images,
    so the two AUCs compare like with like. An attribute with fewer than min_count positives or negatives in the
    train split gets the mean difference as its classifier vector, flagged as a fallback, with NaN scores.
    """
    config = config or DirectionConfig()
    x, pos = _check_inputs(latents, labels, names)
    n, d = x.shape
    train, val = split_indices(n, config.val_fraction, config.seed)

    mean_diff, n_pos, n_neg = _class_means(x, pos)
    x_train, x_val, y_train, y_val = x[train], x[val], pos[train], pos[val]
    train_diff, tr_pos, tr_neg = _class_means(x_train, y_train)
    mean_diff_scores = x_val @ train_diff.T.astype(np.float32)
    scaler = StandardScaler().fit(x_train)
    f_train, f_val = scaler.transform(x_train), scaler.transform(x_val)
    classifier_name = f"LogisticRegression(C={config.C:g}, class_weight='balanced', solver='lbfgs')"

    classifier = np.zeros_like(mean_diff)
    info: dict[str, dict] = {}
    unconverged = []
    for j in tqdm(range(len(names)), desc="attributes", disable=not progress, unit="attr"):
        name = names[j]
        info[name] = {"mean_diff": {
            "norm": float(np.linalg.norm(mean_diff[j])), "n_pos": int(n_pos[j]), "n_neg": int(n_neg[j]),
            "auc": _auc(y_val[:, j], mean_diff_scores[:, j]) if tr_pos[j] and tr_neg[j] else math.nan,
            "model": "mean(positives) - mean(negatives) over all images; auc: the train split's mean difference as "
                     "a linear score on the validation split",
        }}
        stats = {"n_pos": int(tr_pos[j]), "n_neg": int(tr_neg[j]),
                 "n_val_pos": int(y_val[:, j].sum()), "n_val_neg": int(len(val) - y_val[:, j].sum())}
        unit = None
        if tr_pos[j] >= config.min_count and tr_neg[j] >= config.min_count:
            clf, unit = _fit_normal(f_train, y_train[:, j], scaler, config)
        if unit is None:
            classifier[j] = mean_diff[j]
            info[name]["classifier"] = {
                **stats, "norm": info[name]["mean_diff"]["norm"], "auc": math.nan, "accuracy": math.nan,
                "balanced_accuracy": math.nan, "fallback": True,
                "model": f"mean_diff fallback: fewer than {config.min_count} positives or negatives in the train "
                         "split (or a degenerate fit)",
            }
            continue
        iterations = int(np.max(clf.n_iter_))
        if iterations >= config.max_iter:
            unconverged.append(name)
        classifier[j] = unit * float(unit @ mean_diff[j])
        predicted = clf.predict(f_val)
        both = 0 < y_val[:, j].sum() < len(val)
        info[name]["classifier"] = {
            **stats, "norm": float(np.linalg.norm(classifier[j])),
            "auc": _auc(y_val[:, j], clf.decision_function(f_val)),
            "accuracy": float(np.mean(predicted == y_val[:, j])),
            "balanced_accuracy": float(balanced_accuracy_score(y_val[:, j], predicted)) if both else math.nan,
            "fallback": False, "iterations": iterations,
            "model": f"{classifier_name} on the standardised latent of the train split; vector = unit normal x "
                     "gap between the class mean projections over all images",
        }
    if unconverged:
        log.warning("the classifier did not converge in %d iterations for %s", config.max_iter, ", ".join(unconverged))

    nullspaces = {}
    for name in [n for n in config.nullspace if n in names and not info[n]["classifier"]["fallback"]]:
        j = names.index(name)
        basis, aucs = nullspace_basis(x_train, y_train[:, j], x_val, y_val[:, j], classifier[j], config)
        nullspaces[name] = torch.from_numpy(basis).float()
        info[name]["nullspace"] = {
            "rows": len(basis), "auc": aucs,
            "model": "INLP: the classifier normal, then the same classifier refitted on the train split's latents "
                     "projected off the rows so far, while its held-out AUC (listed per round) exceeds "
                     f"{config.nullspace_min_auc:g}, at most {config.nullspace_rounds} rounds"}
        log.info("nullspace of %s: %d rows, held-out AUC per round %s", name, len(basis),
                 " -> ".join(f"{a:.3f}" for a in aucs))

    within, reader = {}, None
    if config.gender in names:
        within, reader = _within_gender(x, pos, names, mean_diff, classifier, config, info)

    vectors = {"mean_diff": torch.from_numpy(mean_diff).float(), "classifier": torch.from_numpy(classifier).float()}
    return Directions(list(names), vectors, {m: cosine_gram(v) for m, v in vectors.items()}, info, d,
                      model_config, {**asdict(config), "nullspace": list(config.nullspace)}, nullspaces, within,
                      reader)


def _within_gender(x: np.ndarray, pos: np.ndarray, names: list[str], mean_diff: np.ndarray, classifier: np.ndarray,
                   config: DirectionConfig, info: dict[str, dict]) -> tuple[dict[str, torch.Tensor], dict | None]:
    """Each attribute's class-mean difference among the faces with the gender attribute ("pos") and among those
    without ("neg"), over every image as the mean differences are; a group with fewer than gender_min_count faces on
    a side borrows the other's, and where neither has them (the gender attribute itself among them) both are the
    plain mean difference. The reader is a logistic regression of the gender label on the projection onto the
    gender's classifier normal. Records each attribute's counts in info[name]["within_gender"]; no differences
    where either gender has fewer than gender_min_count faces."""
    g = names.index(config.gender)
    group = pos[:, g]
    if min(group.sum(), (~group).sum()) < config.gender_min_count:
        log.warning("no within-gender differences: fewer than %d faces of one %s group", config.gender_min_count,
                    config.gender)
        return {}, None
    fits = {key: _class_means(x[rows], pos[rows]) for key, rows in (("pos", group), ("neg", ~group))}
    within = {key: diff.copy() for key, (diff, _, _) in fits.items()}
    for j, name in enumerate(names):
        counts = {key: [int(n_pos[j]), int(n_neg[j])] for key, (_, n_pos, n_neg) in fits.items()}
        enough = [key for key in ("pos", "neg") if j != g and min(counts[key]) >= config.gender_min_count]
        for key in ("pos", "neg"):
            if not enough:
                within[key][j] = mean_diff[j]
            elif key not in enough:
                within[key][j] = fits[enough[0]][0][j]
        info[name]["within_gender"] = {
            "n": counts, "borrowed": [k for k in ("pos", "neg") if enough and k not in enough],
            "fallback": not enough,
            "model": f"mean(positives) - mean(negatives) among the faces with {config.gender} (pos) and without "
                     f"(neg); a group with fewer than {config.gender_min_count} on a side borrows the other's; "
                     "fallback: the plain mean difference"}
    unit = classifier[g] / np.linalg.norm(classifier[g])
    s = (x @ unit.astype(np.float32))[:, None]
    lr = LogisticRegression().fit(s, group)
    reader = {"attribute": config.gender, "coef": float(lr.coef_[0, 0]), "intercept": float(lr.intercept_[0]),
              "accuracy": float(lr.score(s, group)),
              "model": f"LogisticRegression of {config.gender} on the latent's projection onto its classifier "
                       "normal's direction, over every image"}
    return {key: torch.from_numpy(v).float() for key, v in within.items()}, reader

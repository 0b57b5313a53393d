"""Datasets: the CelebA layout (images + attribute file) or any folder of images, preprocessed to uint8 tensors."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .fileio import save_safetensors
from .imaging import ImageError, celeba_crop, list_images, load_image, to_tensor

log = logging.getLogger(__name__)

CELEBA_IMAGES = "img_align_celeba"
CELEBA_ATTRIBUTES = "list_attr_celeba.txt"


def read_celeba_attributes(path: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Parse list_attr_celeba.txt: a count line, a line of names, then 'id v1 .. v40' rows (CRLF or LF)."""
    path = Path(path)
    lines = [line.strip() for line in path.read_text().splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < 2:
        raise ValueError(f"{path}: expected a count line and a header line")
    try:
        count = int(lines[0])
    except ValueError:
        raise ValueError(f"{path}: first line should be the image count, got {lines[0][:40]!r}") from None
    names = lines[1].split()
    body = "\n".join(lines[2:])
    if not body:
        return names, {}
    try:
        ids = np.loadtxt(io.StringIO(body), dtype=str, usecols=0, ndmin=1)
        table = np.loadtxt(io.StringIO(body), dtype=np.int8, usecols=range(1, len(names) + 1), ndmin=2)
    except ValueError as err:
        for number, line in enumerate(lines[2:], start=3):
            if len(line.split()) != len(names) + 1:
                raise ValueError(f"{path}:{number}: expected {len(names) + 1} fields, got {len(line.split())}") from None
        raise ValueError(f"{path}: attribute values must be integers such as 1 and -1 ({err})") from None
    rows = dict(zip(ids, table))
    if count != len(rows):
        log.warning("%s announces %d rows but holds %d", path, count, len(rows))
    return names, rows


@dataclass
class ImageSet:
    """Files to train on, with CelebA attribute labels (+1/-1) when the folder has them."""

    root: Path
    files: list[Path]
    attributes: list[str] = field(default_factory=list)
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    def names(self) -> list[str]:
        return [str(f.relative_to(self.root)) for f in self.files]

    def subset(self, indices) -> "ImageSet":
        indices = list(indices)
        labels = None if self.labels is None else self.labels[indices]
        return ImageSet(self.root, [self.files[i] for i in indices], self.attributes, labels)


def celeba_image_dirs(root: Path) -> list[Path]:
    """img_align_celeba/ and every img_align_celeba_*/ beside it (e.g. _extra): one label file serves them all."""
    return sorted(d for d in root.glob(CELEBA_IMAGES + "*") if d.is_dir()
                  and (d.name == CELEBA_IMAGES or d.name.startswith(CELEBA_IMAGES + "_")))


def open_dataset(root: str | Path, limit: int | None = None, image_dirs: list[str] | None = None) -> ImageSet:
    """CelebA layout when list_attr_celeba.txt and img_align_celeba*/ folders exist, else every image below root.

    `image_dirs` picks the CelebA image folders by name (default: all of them); ids are joined on the file name,
    so a face is labelled whichever folder holds it.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    attr_file = root / CELEBA_ATTRIBUTES
    found = celeba_image_dirs(root)
    if image_dirs is not None:
        by_name = {d.name: d for d in found}
        unknown = [name for name in image_dirs if name not in by_name]
        if unknown:
            raise ValueError(f"image folder(s) {', '.join(unknown)} not found in {root}; "
                             f"it has {', '.join(by_name) or 'none'}")
        found = [by_name[name] for name in image_dirs]
    if found and attr_file.is_file():
        names, rows = read_celeba_attributes(attr_file)
        files = []
        for image_dir in found:
            present = list_images(image_dir)
            labelled = [f for f in present if f.name in rows]
            if len(present) > len(labelled):
                log.warning("%d images in %s have no attribute row and are left out",
                            len(present) - len(labelled), image_dir)
            files += labelled
        labels = np.stack([rows[f.name] for f in files]) if files else np.zeros((0, len(names)), np.int8)
        data = ImageSet(root, files, names, labels)
    elif image_dirs is not None:
        raise ValueError(f"{root} has no {CELEBA_ATTRIBUTES}; image_dirs only applies to the CelebA layout")
    else:
        data = ImageSet(root, list_images(root))
    if limit is not None:
        data = data.subset(range(min(limit, len(data))))
    if len(data) == 0:
        raise ValueError(f"no images found in {root}")
    return data


def split_names(data: ImageSet, val_fraction: float, seed: int) -> dict[str, list[str]]:
    """A deterministic train/validation split by file name, saved with the run so resumes and evals agree."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    names = sorted(data.names())
    order = np.random.default_rng(seed).permutation(len(names))
    n_val = max(1, round(val_fraction * len(names)))
    return {"val": sorted(names[i] for i in order[:n_val]), "train": sorted(names[i] for i in order[n_val:])}


def split_keeping_validation(data: ImageSet, val_names: list[str]) -> dict[str, list[str]]:
    """Validation fixed to a given list (e.g. a release's), every other image for training.

    Figures stay comparable across releases, and a model started from a release never trains on the faces it
    is validated on.
    """
    val = set(val_names)
    names = data.names()
    present = [n for n in names if n in val]
    if not present:
        raise ValueError("none of the given validation images are in the data; is --data the same folder?")
    if len(present) < len(val):
        log.warning("%d of %d validation images are not in the data", len(val) - len(present), len(val))
    return {"val": sorted(present), "train": sorted(n for n in names if n not in val)}


def select(data: ImageSet, names: list[str]) -> ImageSet:
    index = {n: i for i, n in enumerate(data.names())}
    missing = [n for n in names if n not in index]
    if missing:
        log.warning("%d files of the saved split are gone (e.g. %s); they are left out", len(missing), missing[0])
    return data.subset(index[n] for n in names if n in index)


def random_subset(data: ImageSet, n: int, seed: int) -> ImageSet:
    """n images drawn without replacement, in their original order: a sample whose figure stands for the whole set
    (the first n files of a folder need not: CelebA's stored resolution varies with the id)."""
    if n > len(data):
        raise ValueError(f"a sample of {n} images asks for more than the {len(data)} there are")
    return data.subset(sorted(np.random.default_rng(seed).choice(len(data), n, replace=False).tolist()))


class FaceFiles(Dataset):
    """Decodes, crops and resizes one file per item (in DataLoader workers); a bad file yields None, not a crash."""

    def __init__(self, files: list[Path], image_size: int) -> None:
        self.files, self.image_size = files, image_size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        try:
            return i, to_tensor(celeba_crop(load_image(self.files[i]), self.image_size))
        except (ImageError, OSError) as err:
            log.warning("skipping %s: %s", self.files[i], err)
            return i, None


def _collate(items):
    good = [(i, x) for i, x in items if x is not None]
    bad = len(items) - len(good)
    if not good:
        return torch.zeros(0, dtype=torch.long), None, bad
    return torch.tensor([i for i, _ in good]), torch.stack([x for _, x in good]), bad


def decode_all(files: list[Path], image_size: int, workers: int = 2, batch_size: int = 64,
               progress: bool = True) -> tuple[torch.Tensor, np.ndarray, int]:
    """All files -> (uint8 tensor of the good ones, their indices, number skipped)."""
    loader = DataLoader(FaceFiles(files, image_size), batch_size=batch_size, num_workers=workers,
                        collate_fn=_collate)
    images, kept, skipped = [], [], 0
    for idx, batch, bad in tqdm(loader, desc="decoding images", disable=not progress, unit="batch"):
        skipped += bad
        if batch is not None:
            images.append(batch)
            kept.append(idx.numpy())
    if not images:
        raise ValueError(f"none of the {len(files)} images could be read")
    if skipped:
        log.warning("skipped %d unreadable images of %d", skipped, len(files))
    return torch.cat(images), np.concatenate(kept), skipped


def load_images(data: ImageSet, image_size: int, cache: str | Path | None = None, workers: int = 2,
                progress: bool = True) -> tuple[torch.Tensor, ImageSet]:
    """Preprocessed uint8 images (N, 3, S, S) for `data`, read from / written to an optional on-disk cache."""
    key = hashlib.sha256(json.dumps([image_size, data.names()]).encode()).hexdigest()[:16]
    if cache is not None:
        cache = Path(cache)
        if cache.is_file():
            try:
                stored = load_file(str(cache))
                meta = json.loads(Path(str(cache) + ".json").read_text())
                if meta.get("key") == key:
                    return stored["images"], data.subset(stored["kept"].tolist())
                log.warning("cache %s was built for other files or size; rebuilding", cache)
            except (SafetensorError, OSError, ValueError, KeyError) as err:
                log.warning("cache %s is unreadable (%s); rebuilding", cache, err)
    images, kept, _ = decode_all(data.files, image_size, workers, progress=progress)
    if cache is not None:
        save_safetensors({"images": images, "kept": torch.from_numpy(kept)}, cache)
        Path(str(cache) + ".json").write_text(json.dumps({"key": key, "image_size": image_size, "count": len(kept)}))
    return images, data.subset(kept.tolist())


class EpochSampler(Sampler[list[int]]):
    """Batches in a per-epoch order fixed by (seed, epoch), sharded across ranks; can start mid-epoch to resume exactly."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.start_batch = 0, 0

    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.world) // self.batch_size

    def set_position(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        return self.batches_per_epoch() - self.start_batch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)
        per_rank = math.ceil(self.n / self.world)
        order = torch.cat([order, order[: per_rank * self.world - self.n]])[self.rank :: self.world]
        for b in range(self.start_batch, self.batches_per_epoch()):
            yield order[b * self.batch_size : (b + 1) * self.batch_size].tolist()


class IndexedImages(Dataset):
    """In-memory uint8 images, addressed by index (the cached path: no JPEG decoding after the first pass)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor]:
        return i, self.images[i]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)

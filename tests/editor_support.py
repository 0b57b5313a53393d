"""Tiny editor assets and an app subprocess for the editing, app and browser tests.

The model is a 16x16 two-level Glow initialised on real faces; its directions are random vectors (the editor's
tests check the editing algebra and the app's plumbing, not what a trained direction looks like).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from functools import cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from flow_model.config import GlowConfig
from app.directions import Directions, cosine_gram
from app.service import BPD_RANGE_FILE, DIRECTIONS_FILE, EditorService
from flow_model.glow import Glow
from flow_model.imaging import celeba_crop, to_tensor

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(image_size=16, n_bits=5, levels=2, depth=2, hidden=16)
N_INIT = 48


def attribute_names(celeba_dir: Path) -> list[str]:
    with open(celeba_dir / "list_attr_celeba.txt") as f:
        f.readline()
        return f.readline().split()


def full_size_faces(celeba_dir: Path, n: int) -> list[Path]:
    """The first n 178x218 images: faces large enough for the detector without upsampling."""
    found = []
    for path in sorted((celeba_dir / "img_align_celeba").glob("*.jpg")):
        if Image.open(path).size == (178, 218):
            found.append(path)
            if len(found) == n:
                break
    return found


def photo_of(face: Image.Image, angle: float, scale: float, offset: tuple[int, int],
             canvas: tuple[int, int] = (900, 760)) -> Image.Image:
    """The face rotated, enlarged and placed off-centre on a plain background, like an ordinary photo."""
    big = face.resize((round(face.width * scale), round(face.height * scale)), Image.Resampling.BICUBIC)
    big = big.rotate(angle, expand=True, resample=Image.Resampling.BICUBIC, fillcolor=(120, 140, 110))
    photo = Image.new("RGB", canvas, (190, 175, 160))
    photo.paste(big, offset)
    return photo


def file_writer(folder: Path):
    """write(name, bytes or PIL image, **save options) -> the path of a file made in folder, for upload tests."""
    def write(name: str, data: bytes | Image.Image, **save) -> str:
        path = folder / name
        if isinstance(data, Image.Image):
            data.save(path, **save)
        else:
            path.write_bytes(data)
        return str(path)

    return write


def random_directions(names: list[str], dim: int, seed: int = 0, shared: float = 0.6) -> Directions:
    """Random directions with a common component (pairwise cosine ~0.25), correlated like real attributes are,
    so that disentangling them changes something."""
    g = torch.Generator().manual_seed(seed)
    vectors = {m: (torch.randn(len(names), dim, generator=g) + shared * torch.randn(dim, generator=g)) * 0.3
               for m in ("mean_diff", "classifier")}
    info = {n: {m: {"norm": float(vectors[m][i].norm()), "n_pos": 1, "n_neg": 1, "auc": 0.5} for m in vectors}
            for i, n in enumerate(names)}
    return Directions(names, vectors, {m: cosine_gram(v) for m, v in vectors.items()}, info, dim)


@cache
def build_assets(celeba_dir: Path, root: Path) -> Path:
    """A pretrained dir for the tiny model: weights, random directions and a measured bits/dim range."""
    out = root / "tiny_editor_model"
    files = sorted((celeba_dir / "img_align_celeba").glob("*.jpg"))[:N_INIT]
    faces = torch.stack([to_tensor(celeba_crop(Image.open(f).convert("RGB"), TINY["image_size"])) for f in files])
    torch.manual_seed(0)
    model = Glow(GlowConfig(**TINY))
    model.initialize(faces)
    model.save_pretrained(out)
    random_directions(attribute_names(celeba_dir), model.latent_dim).save(out / DIRECTIONS_FILE)
    service = EditorService(model.eval())
    service.measure_bpd_range(faces).save(out / BPD_RANGE_FILE)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppProcess:
    """`python app.py` on a free port, as a user would start it; stopped (and its log kept) by stop()."""

    def __init__(self, model_dir: Path, log_path: Path, timeout: float = 120.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log_path = log_path
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "app.py", "--model", str(model_dir), "--port", str(self.port)],
                                     cwd=ROOT, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"app.py exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"app.py did not serve {self.url} within {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def crop_array(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def serve_app(celeba_dir: Path, tmp_path_factory, log_name: str):
    """Body of a module-scoped fixture: one app subprocess over the tiny assets, stopped after the module."""
    process = AppProcess(build_assets(celeba_dir, tmp_path_factory.getbasetemp()),
                         tmp_path_factory.mktemp(log_name) / "app.log")
    try:
        yield process
    finally:
        process.stop()

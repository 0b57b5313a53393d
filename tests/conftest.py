"""Shared fixtures: tiny configs and the real CelebA subset in ../shared, plus helpers for non-trivial tiny models."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from flow_model.config import GlowConfig
from flow_model.glow import Glow
from flow_model.layers import ActNorm, ZeroConv2d

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]
CELEBA = ROOT.parent / "shared" / "data" / "celeba"

FACES = 240  # real faces in the small CelebA-layout copy the training and CLI tests share


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    if not (CELEBA / "img_align_celeba").is_dir():
        pytest.skip(f"the CelebA subset is not at {CELEBA}")
    return CELEBA


@pytest.fixture(scope="session")
def faces_dir(celeba_dir: Path, tmp_path_factory) -> Path:
    """A CelebA-layout folder of the first FACES real images (symlinks) and their attribute rows, CRLF as upstream.

    Parsing the full 202,599-row attribute file costs seconds per run; the tests that train or run the CLI use this
    copy instead, so each of them pays milliseconds.
    """
    root = tmp_path_factory.mktemp("faces")
    images = root / "img_align_celeba"
    images.mkdir()
    files = sorted((celeba_dir / "img_align_celeba").glob("*.jpg"))[:FACES]
    for f in files:
        (images / f.name).symlink_to(f)
    wanted = {f.name for f in files}
    lines = (celeba_dir / "list_attr_celeba.txt").read_text().splitlines()
    rows = [line for line in lines[2:] if line.split(maxsplit=1)[0] in wanted]
    (root / "list_attr_celeba.txt").write_bytes("\r\n".join([str(len(rows)), lines[1], *rows, ""]).encode())
    return root


def tiny_config(**overrides) -> GlowConfig:
    """8x8, two levels of two steps: every code path of the model at a few milliseconds per pass."""
    values = dict(image_size=8, n_bits=5, levels=2, depth=2, hidden=8)
    values.update(overrides)
    return GlowConfig(**values)


def mark_initialized(module: torch.nn.Module) -> None:
    """Stop every ActNorm from re-initialising itself from the next batch it sees."""
    for m in module.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)


@torch.no_grad()
def randomize(module: torch.nn.Module, generator: torch.Generator, scale: float = 0.1) -> torch.nn.Module:
    """Add noise to every parameter, so zero-initialised convs and identity ActNorms stop hiding mistakes."""
    mark_initialized(module)
    for p in module.parameters():
        p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    for m in module.modules():
        if isinstance(m, ZeroConv2d):
            assert m.conv.weight.abs().min() > 0
    return module


def random_images(n: int, config: GlowConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, config.in_channels, config.image_size, config.image_size), generator=g,
                         dtype=torch.uint8)


def nontrivial_model(config: GlowConfig | None = None, seed: int = 0, scale: float = 0.05) -> Glow:
    """A Glow whose ActNorms were initialised from data and whose every weight was then perturbed."""
    model = Glow(config or tiny_config(), seed=seed)
    model.initialize(random_images(16, model.config, seed))
    return randomize(model, torch.Generator().manual_seed(seed + 1), scale)


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of fn at each sample of x, from the dense float64 autograd Jacobian: the brute-force reference."""
    values = []
    for sample in x.double():
        shape = (1, *sample.shape)
        jac = torch.autograd.functional.jacobian(lambda v: fn(v.view(shape)).reshape(-1), sample.reshape(-1),
                                                 vectorize=True)
        assert jac.shape[0] == jac.shape[1], "the map must be square to have a determinant"
        sign, logabsdet = torch.linalg.slogdet(jac)
        assert sign != 0, "the Jacobian is singular"
        values.append(logabsdet)
    return torch.stack(values)


def train_config(data: Path, out: Path, **overrides):
    """A TrainConfig sized for tests: batches of 8, a checkpoint every 2 steps, no sample grids mid-run."""
    from flow_model.training.trainer import TrainConfig

    values = dict(data=str(data), out=str(out), batch_size=8, lr=2e-3, warmup_steps=5, max_steps=4, ckpt_every=2,
                  sample_every=10**6, log_every=1, val_fraction=0.1, val_max=32, workers=0, init_batch=32,
                  progress=False, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


@pytest.fixture(scope="session")
def tiny_run(faces_dir: Path, tmp_path_factory) -> Path:
    """A finished 4-step run directory (with EMA weights) of the 8x8 tiny model, for the CLI and export tests."""
    from flow_model.training.trainer import Trainer

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    config = train_config(faces_dir, out, ema=0.5, limit=64, cache=str(out.parent / "cache.safetensors"))
    Trainer(config, tiny_config()).run()
    return out

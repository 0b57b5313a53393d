"""Shared fixtures: tiny configs and the real CelebA subset in ../shared."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]
CELEBA = ROOT.parent / "shared" / "data" / "celeba"


@pytest.fixture(scope="session")
def celeba_dir() -> Path:
    if not (CELEBA / "img_align_celeba").is_dir():
        pytest.skip(f"the CelebA subset is not at {CELEBA}")
    return CELEBA

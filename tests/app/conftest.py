"""Fixtures shared by the editor's tests: the service on the tiny model trained by tests.editor_support, and
full-size CelebA photos for it (a module may override either, e.g. with fewer photos)."""
from __future__ import annotations

from pathlib import Path

import pytest

from app.service import EditorService
from tests.editor_support import build_assets, full_size_faces


@pytest.fixture(scope="module")
def service(celeba_dir: Path, tmp_path_factory) -> EditorService:
    return EditorService.load(build_assets(celeba_dir, tmp_path_factory.getbasetemp()))


@pytest.fixture(scope="module")
def photos(celeba_dir: Path) -> list[Path]:
    return full_size_faces(celeba_dir, 6)

"""The UI's handlers called directly (no server): what the edit view shows next to the image."""
from __future__ import annotations

from pathlib import Path

import pytest

from app.calibration import Calibration, SliderCalibration
from app.ui import EditorUI
from tests.editor_support import build_assets, full_size_faces
from app.service import EditorService


@pytest.fixture(scope="module")
def ui(celeba_dir: Path, tmp_path_factory) -> EditorUI:
    return EditorUI(EditorService.load(build_assets(celeba_dir, tmp_path_factory.getbasetemp())))


def test_the_edit_view_says_when_an_edit_is_shown_at_reduced_strength(ui, celeba_dir):
    face, *_ = ui.encode({"path": str(full_size_faces(celeba_dir, 1)[0])})
    values = [0.0] * len(ui.labels)

    def render(smile: float):
        values[ui.labels.index("Smiling")] = smile
        return ui.render(face, {}, [], "classifier", False, True, [], "all levels", False, *values)

    image, note = render(1.0)
    assert image.size == (ui.service.display_size,) * 2 and note == ""
    image, note = render(60.0)
    assert image.size == (ui.service.display_size,) * 2 and "of the requested strength" in note
    assert render(0.0)[1] == ""


def test_the_local_checkbox_keeps_a_local_slider_to_its_region_or_lets_it_change_the_whole_face(ui, celeba_dir):
    service = ui.service
    service.set_calibration(Calibration({"Smiling": SliderCalibration("classifier", 1.0, local=True)}))
    try:
        face, *_ = ui.encode({"path": str(full_size_faces(celeba_dir, 1)[0])})
        values = [0.0] * len(ui.labels)
        values[ui.labels.index("Smiling")] = 1.0
        shown = {local: ui.render(face, {}, [], "auto", False, local, [], "all levels", True, *values)[0]
                 for local in (True, False)}
        for local, image in shown.items():
            expected = service.display(service.edit(face, {"Smiling": 1.0}, local=local).image)
            assert image.tobytes() == expected.tobytes()
        assert shown[True].tobytes() != shown[False].tobytes()
    finally:
        service.set_calibration(None)

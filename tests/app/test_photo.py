"""Edits at the photo's own resolution: the user's pixels come back, sharp, and only the face region changes."""
from __future__ import annotations

import io
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.align import warp
from app.calibration import CALIBRATION_FILE, Calibration, SliderCalibration
from app.cli import main
from app.photo import MAX_CROP_SIDE, MIN_CROP_SIDE, FacePhoto, feather_mask, paste_back, pixels, upsample_change
from app.service import EditorService
from flow_model.imaging import load_image
from tests.cli_support import run_main
from tests.editor_support import build_assets, full_size_faces, photo_of

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "assets" / "celeba64"
PHOTOS = ROOT.parent / "shared" / "data" / "photos"


@pytest.fixture(scope="module")
def tiny(celeba_dir: Path, tmp_path_factory) -> Path:
    return build_assets(celeba_dir, tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def service(tiny: Path) -> EditorService:
    return EditorService.load(tiny)


@pytest.fixture(scope="module")
def photo(celeba_dir: Path) -> Image.Image:
    """An ordinary-looking photo: a CelebA face rotated, enlarged and placed off-centre on a plain background."""
    return photo_of(Image.open(full_size_faces(celeba_dir, 1)[0]).convert("RGB"), 14.0, 2.4, (150, 40))


def array(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.int16)


def changed_pixels_in_crop_coordinates(before: Image.Image, after: Image.Image, matrix: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero((array(before) != array(after)).any(-1))
    return np.stack([xs + 0.5, ys + 0.5], 1) @ matrix[:, :2].T + matrix[:, 2]


def laplacian_energy(img: np.ndarray) -> float:
    """Mean squared Laplacian of the luminance: the high-frequency energy a blurry enlargement lacks."""
    g = img.astype(np.float64) @ [0.299, 0.587, 0.114]
    lap = 4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:]
    return float((lap**2).mean())


def test_slider_at_zero_gives_back_the_whole_photo(service, photo):
    face = service.face_from_image(photo)
    unchanged = service.edited_photo(face, service.edit(face, {"Smiling": 0.0}))
    assert unchanged.size == photo.size
    assert np.abs(array(unchanged) - array(photo)).max() <= 1
    assert np.array_equal(array(service.view(face)), array(face.crop))  # the reconstruction is the user's crop


def test_an_edit_changes_only_pixels_inside_the_face_crop(service, photo):
    face = service.face_from_image(photo)
    edited = service.edit(face, {"Smiling": 1.0, "Blond hair": 1.0})
    result = service.edited_photo(face, edited)
    inside = changed_pixels_in_crop_coordinates(photo, result, face.photo.matrix)
    assert len(inside) > 1000, "the edit should change the face"
    side = face.photo.side
    assert ((inside > 0) & (inside < side)).all(), "a pixel outside the feathered face mask changed"
    # and within the crop the change is the upsampled model change, not a copy of the model's blurry output
    crop = np.asarray(warp(result, face.photo.matrix, side), dtype=np.float64)
    expected = (face.photo.crop + upsample_change(edited.change, face.photo.crop / 255)).permute(1, 2, 0).numpy()
    centre = slice(side // 4, 3 * side // 4)
    assert np.abs(crop[centre, centre] - expected[centre, centre]).mean() < 3.0


def test_a_smile_keeps_the_photos_sharpness_where_the_enlarged_model_output_does_not():
    if not (SHIPPED / "model.safetensors").is_file() or not (PHOTOS / "biden2.jpg").is_file():
        pytest.skip("needs the shipped model and ../shared/data/photos")
    service = EditorService.load(SHIPPED)
    face = service.face_from_image(PHOTOS / "biden2.jpg")
    edited = service.edit(face, {"Smiling": 1.0})
    assert edited.strength > 0 and edited.change is not None  # biden2 already smiles: the edit may back off
    side = face.photo.side
    region = slice(side // 4, 3 * side // 4)  # the face: eyes to chin
    original = laplacian_energy(np.asarray(service.edited_crop(face))[region, region])
    new = laplacian_energy(np.asarray(service.edited_crop(face, edited))[region, region])
    enlarged = service.display(edited.image).resize((side, side), Image.Resampling.LANCZOS)
    old = laplacian_energy(np.asarray(enlarged)[region, region])
    assert new >= 0.8 * original, (new, original)
    assert old < 0.8 * original, (old, original)


def test_paste_back_round_trip_through_a_rotated_scaled_crop(photo):
    """A change pasted into the photo and cut out again through the same similarity transform comes back."""
    angle, scale, side = 0.3, 0.55, 300
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = np.hstack([scale * rot, [[-40.0], [-150.0]]])  # photo pixels -> crop pixels
    g = torch.Generator().manual_seed(0)
    change = torch.randn(3, 16, 16, generator=g) * 30
    pasted = paste_back(photo, matrix, torch.zeros_like(change), change, feather_mask(64), side)
    recovered = pixels(warp(pasted, matrix, side)) - pixels(warp(photo, matrix, side))
    expected = torch.nn.functional.interpolate(change[None], size=(side, side), mode="bilinear",
                                               align_corners=False)[0]
    inner = slice(side // 5, 4 * side // 5)
    error = (recovered - expected)[:, inner, inner]
    assert error.abs().mean() < 2.0 and expected[:, inner, inner].abs().mean() > 10
    outside = changed_pixels_in_crop_coordinates(photo, pasted, matrix)
    assert ((outside > 0) & (outside < side)).all()


def test_mask_fades_to_zero_at_the_crop_border():
    mask = feather_mask(100)
    assert mask[50, 50] == 1 and mask[0].max() < 0.01 and mask[:, -1].max() < 0.01
    assert torch.all(mask >= 0) and torch.all(mask <= 1)


def test_a_small_photo_is_upscaled_to_the_minimum_crop(service, celeba_dir):
    small = Image.open(full_size_faces(celeba_dir, 2)[1]).convert("RGB").resize((120, 147))
    face = service.face_from_image(small)
    assert face.photo.side == MIN_CROP_SIDE
    result = service.edited_photo(face, service.edit(face, {"Smiling": 1.0}))
    assert result.size == small.size and not np.array_equal(array(result), array(small))


def test_a_very_large_photo_is_capped_and_stays_within_memory(service, celeba_dir):
    face_img = Image.open(full_size_faces(celeba_dir, 3)[2]).convert("RGB")
    big = photo_of(face_img, -8.0, 12.0, (900, 300), canvas=(4000, 3500))  # 14 megapixels, the face ~1000 px wide
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    face = service.face_from_image(big)
    result = service.edited_photo(face, service.edit(face, {"Smiling": 1.0}))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert face.photo.side == MAX_CROP_SIDE and result.size == big.size
    assert grown_mb < 800, f"peak memory grew by {grown_mb:.0f} MB"


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "exif"])
def test_unusual_inputs_come_back_whole_and_upright(service, photo, mode):
    buffer = io.BytesIO()
    if mode == "exif":  # stored sideways, with an EXIF tag saying how to turn it upright
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to view
        photo.transpose(Image.Transpose.ROTATE_90).save(buffer, format="JPEG", quality=95, exif=exif)
    else:
        photo.convert(mode).save(buffer, format="PNG" if mode == "RGBA" else "JPEG", quality=95)
    data = buffer.getvalue()
    upright = load_image(data)
    assert upright.size == photo.size
    face = service.face_from_image(data)
    assert service.edited_photo(face, service.edit(face, {})).tobytes() == upright.tobytes()
    result = service.edited_photo(face, service.edit(face, {"Smiling": 1.0}))
    assert result.mode == "RGB" and result.size == photo.size


def test_a_model_size_crop_has_no_photo_behind_it(service):
    x = Image.new("RGB", (16, 16), (120, 100, 90))
    face = service.face_from_image(x)
    assert face.photo.photo is None and isinstance(face.photo, FacePhoto)
    assert service.edited_photo(face, service.edit(face, {"Smiling": 1.0})).size == (16, 16)
    with pytest.raises(ValueError, match="unknown upsampling 'nearest'"):
        service.edited_photo(face, None, "nearest")


def test_interpolation_frames_start_and_end_on_the_two_crops(service, photo, celeba_dir):
    a = service.face_from_image(photo)
    b = service.face_from_image(full_size_faces(celeba_dir, 4)[3])
    frames = service.interpolate_faces(a, b, 5)
    assert len(frames) == 5 and frames[0].size == (service.display_size,) * 2
    assert np.abs(array(frames[0]) - array(a.crop)).max() <= 1
    assert np.abs(array(frames[-1]) - array(b.crop)).max() <= 1
    assert laplacian_energy(array(frames[2])) > 0.5 * min(laplacian_energy(array(a.crop)),
                                                          laplacian_energy(array(b.crop)))


# -- the batch command line ---------------------------------------------------------------------------
def run_cli(capsys, *args) -> tuple[int, str, str]:
    return run_main(main, capsys, *args)


def test_cli_edits_several_photos_and_names_the_one_that_failed(tiny, photo, tmp_path, capsys):
    photo.save(tmp_path / "portrait.jpg", quality=95)
    Image.new("RGB", (300, 200), (90, 120, 200)).save(tmp_path / "sky.png")
    out = tmp_path / "out"
    code, stdout, err = run_cli(capsys, "edit", tmp_path / "portrait.jpg", tmp_path / "sky.png", "--slider",
                                "smiling=1", "--slider", "BLOND hair=0.5", "--out", out, "--model", tiny,
                                "--no-progress")
    assert code == 1 and "wrote 1 of 2 photos" in stdout
    assert "sky.png" in err and "no face found" in err
    written = Image.open(out / "portrait.png")
    assert written.size == photo.size and not np.array_equal(array(written), array(load_image(tmp_path / "portrait.jpg")))
    service = EditorService.load(tiny)
    face = service.face_from_image(tmp_path / "portrait.jpg")
    expected = service.edited_photo(face, service.edit(face, {"Smiling": 1.0, "Blond hair": 0.5}))
    assert np.array_equal(array(written), array(expected))  # exactly the service's (and so the UI's) edit

    code, _, _ = run_cli(capsys, "edit", tmp_path / "portrait.jpg", "--slider", "Smiling=1", "--out", out,
                         "--model", tiny, "--crop")
    assert code == 0 and Image.open(out / "portrait.png").size == (face.photo.side,) * 2


def test_cli_reaches_sliders_outside_the_default_set_and_applies_the_calibration(tiny, photo, tmp_path, capsys):
    """The CLI edits exactly as the service's defaults say: a calibrated scale, and a slider left out of the
    default set (still in the UI under "More") is still reachable by its label."""
    model = tmp_path / "calibrated"
    shutil.copytree(tiny, model)
    Calibration({"Smiling": SliderCalibration(scale=2.0), "Bald": SliderCalibration(default=False)}).save(
        model / CALIBRATION_FILE)
    photo.save(tmp_path / "p.jpg", quality=95)
    code, _, err = run_cli(capsys, "edit", tmp_path / "p.jpg", "--slider", "bald=1", "--slider", "Smiling=0.5",
                           "--out", tmp_path / "out", "--model", model, "--no-progress")
    assert code == 0, err
    service = EditorService.load(model)
    assert "Bald" not in [s.label for s in service.sliders]
    face = service.face_from_image(tmp_path / "p.jpg")
    expected = service.edited_photo(face, service.edit(face, {"Bald": 1.0, "Smiling": 0.5}))
    assert np.array_equal(array(Image.open(tmp_path / "out" / "p.png")), array(expected))
    plain = EditorService.load(tiny)
    assert torch.allclose(service.edit_latent(face.latent, {"Smiling": 0.5}) - face.latent,
                          plain.edit_latent(face.latent, {"Smiling": 1.0}) - face.latent, atol=1e-5)


def test_cli_keeps_a_local_slider_to_its_region_unless_asked_for_the_whole_face(tiny, photo, tmp_path, capsys):
    model = tmp_path / "local"
    shutil.copytree(tiny, model)
    Calibration({"Smiling": SliderCalibration(scale=2.0, local=True)}).save(model / CALIBRATION_FILE)
    photo.save(tmp_path / "p.jpg", quality=95)
    service = EditorService.load(model)
    face = service.face_from_image(tmp_path / "p.jpg")
    for flags, local in (((), True), (("--whole-face",), False)):
        out = tmp_path / f"out_{local}"
        code, _, err = run_cli(capsys, "edit", tmp_path / "p.jpg", "--slider", "Smiling=1", *flags, "--out", out,
                               "--model", model, "--no-progress")
        assert code == 0, err
        expected = service.edited_photo(face, service.edit(face, {"Smiling": 1.0}, local=local))
        assert np.array_equal(array(Image.open(out / "p.png")), array(expected))
    assert not np.array_equal(array(Image.open(tmp_path / "out_True" / "p.png")),
                              array(Image.open(tmp_path / "out_False" / "p.png")))


@pytest.mark.parametrize("args, message", [
    (["--slider", "Smile=1"], "unknown slider 'Smile'; valid: Smiling, Age"),
    (["--slider", "Smiling"], "expected NAME=VALUE"),
    (["--slider", "Smiling=lots"], "'lots' is not a number"),
    (["--slider", "Smiling=nan"], "finite"),
])
def test_cli_rejects_bad_sliders(tiny, photo, tmp_path, capsys, args, message):
    photo.save(tmp_path / "p.jpg")
    code, _, err = run_cli(capsys, "edit", tmp_path / "p.jpg", *args, "--out", tmp_path / "out", "--model", tiny)
    assert code == 2 and message in err


def test_cli_unwritable_output_folder(tiny, photo, tmp_path, capsys):
    photo.save(tmp_path / "p.jpg")
    (tmp_path / "file").write_text("a file, not a folder")
    code, _, err = run_cli(capsys, "edit", tmp_path / "p.jpg", "--slider", "Smiling=1", "--out",
                           tmp_path / "file" / "out", "--model", tiny)
    assert code == 2 and "cannot create the output folder" in err

"""End to end: `python app.py` in a subprocess, driven through its named API with gradio_client, including every
kind of bad input (each must give a clear message while the app keeps serving) and two concurrent sessions."""
from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app import default_threads
from app.limits import workers
from flow_model.imaging import load_image
from tests.editor_support import AppProcess, crop_array, file_writer, full_size_faces, serve_app


@pytest.fixture(scope="module")
def app(celeba_dir: Path, tmp_path_factory):
    yield from serve_app(celeba_dir, tmp_path_factory, "app_log")


@pytest.fixture(scope="module")
def downloads(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("downloads")


def connect(app: AppProcess, downloads: Path) -> Client:
    return Client(app.url, verbose=False, analytics_enabled=False, download_files=str(downloads))


@pytest.fixture(scope="module")
def client(app, downloads) -> Client:
    return connect(app, downloads)


@pytest.fixture(scope="module")
def photos(celeba_dir: Path) -> list[Path]:
    return full_size_faces(celeba_dir, 8)


@pytest.fixture
def make_file(tmp_path):
    return file_writer(tmp_path)


def encode(client: Client, path: str):
    return client.predict(handle_file(path), api_name="/encode")


def still_serving(client: Client) -> None:
    assert len(client.predict(0.5, 1, 1, api_name="/sample")) == 1


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height but holds almost no data: how decompression bombs look to a decoder."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- the main job, through the API ---------------------------------------------------------------
def test_the_server_measured_its_thread_count(app, client):
    """Started without --threads, it timed a decode at 1 and 2 threads and serves cores // threads requests."""
    still_serving(client)
    log = app.log()
    if default_threads() == 1:
        return
    chosen = re.search(r"ms at 2 thread\(s\): (\d) thread\(s\) per request", log)
    assert chosen, log
    threads = int(chosen.group(1))
    assert f"{workers(threads)} model request(s) at a time with {threads} thread(s) each" in log


def test_encode_edit_interpolate_sample(client, photos):
    aligned, info = encode(client, str(photos[0]))
    assert Image.open(aligned).size == (256, 256)
    assert "bits/dim" in info and "validation faces" in info
    original = np.asarray(load_image(photos[0]), dtype=np.int16)
    unchanged, applied = client.predict({}, "classifier", [], "all levels", api_name="/edit")
    assert "Applied 100.0%" in applied
    assert np.array_equal(crop_array(unchanged), original)
    smile = crop_array(client.predict({"Smiling": 1.5}, "classifier", [], "all levels", api_name="/edit")[0])
    assert smile.shape == original.shape  # the whole photo, at its own resolution
    assert np.abs(smile - original).mean() > 0.5
    kept, _ = client.predict({"Smiling": 1.5}, "mean_diff", ["Male", "Age"], "coarse only (4x4)", api_name="/edit")
    assert not np.array_equal(crop_array(kept), smile)

    frames, _, first, gif = client.predict(handle_file(str(photos[0])), handle_file(str(photos[1])), 5, True,
                                           api_name="/interpolate")
    assert len(frames) == 5
    assert np.array_equal(crop_array(frames[0]["image"]), crop_array(aligned))  # frame 0 is photo A's crop
    assert np.array_equal(crop_array(first), crop_array(aligned))
    assert Image.open(gif).n_frames == 8 and Image.open(gif).size == (256, 256)  # forward and back

    samples = client.predict(0.7, 3, 4, api_name="/sample")
    again = client.predict(0.7, 3, 4, api_name="/sample")
    assert len(samples) == 4
    assert all(np.array_equal(crop_array(a["image"]), crop_array(b["image"])) for a, b in zip(samples, again))


def test_custom_slider_from_two_small_sets(client, photos):
    encode(client, str(photos[2]))
    with_files = [handle_file(str(p)) for p in photos[:3]]
    without_files = [handle_file(str(p)) for p in photos[3:6]]
    message, *_ = client.predict("Tiny sample", with_files, without_files, [], api_name="/custom_slider")
    assert "fitted on 3 faces with and 3 without" in message
    assert "**Cross-validated on your photos:** Too few photos to tell" in message and "Held-out AUC" in message
    base, _ = client.predict({}, "classifier", [], "all levels", api_name="/edit")
    moved, _ = client.predict({"Tiny sample": 1.0}, "classifier", [], "all levels", api_name="/edit")
    assert not np.array_equal(crop_array(base), crop_array(moved))
    with pytest.raises(AppError, match="at least 3 faces"):
        client.predict("Too few", with_files[:2], without_files, [], api_name="/custom_slider")


def test_sessions_never_see_each_other(app, downloads, photos):
    first, second = connect(app, downloads), connect(app, downloads)
    encode(first, str(photos[3]))
    encode(second, str(photos[4]))
    edit_a, _ = first.predict({}, "classifier", [], "all levels", api_name="/edit")
    edit_b, _ = second.predict({}, "classifier", [], "all levels", api_name="/edit")
    assert np.array_equal(crop_array(edit_a), np.asarray(load_image(photos[3]), dtype=np.int16))
    assert np.array_equal(crop_array(edit_b), np.asarray(load_image(photos[4]), dtype=np.int16))
    fresh = connect(app, downloads)
    with pytest.raises(AppError, match="no face yet"):
        fresh.predict({"Smiling": 1.0}, "classifier", [], "all levels", api_name="/edit")


# -- bad input: a clear message each, and the app keeps serving -----------------------------------
def test_not_an_image(client, make_file):
    with pytest.raises(AppError, match="not an image"):
        encode(client, make_file("notes.jpg", b"these are my holiday notes, not a photo\n" * 20))
    still_serving(client)


def test_truncated_file(client, make_file, photos):
    data = photos[0].read_bytes()
    with pytest.raises(AppError, match="truncated or corrupt"):
        encode(client, make_file("cut.jpg", data[: len(data) // 2]))
    still_serving(client)


def test_file_over_20_mb(client, make_file, photos):
    with pytest.raises(ValueError, match="exceeds the maximum file size of 20971520 bytes"):  # before it is stored
        encode(client, make_file("huge.jpg", photos[0].read_bytes() + b"\0" * (21 * 2**20)))
    still_serving(client)


def test_over_the_pixel_limit(client, make_file):
    with pytest.raises(AppError, match="48 megapixels.*limit is 16"):
        encode(client, make_file("big.png", png_header(8000, 6000)))
    still_serving(client)


def test_decompression_bomb(client, make_file):
    with pytest.raises(AppError, match="too large|megapixels"):
        encode(client, make_file("bomb.png", png_header(30000, 30000)))
    still_serving(client)


def test_tiny_image(client, make_file):
    with pytest.raises(AppError, match="only 24x18 pixels"):
        encode(client, make_file("tiny.png", Image.new("RGB", (24, 18), (200, 150, 120))))
    still_serving(client)


def test_no_face(client, make_file):
    rng = np.random.default_rng(0)
    landscape = Image.fromarray(rng.integers(0, 256, (240, 320, 3), dtype=np.uint8))
    with pytest.raises(AppError, match="no face found"):
        encode(client, make_file("landscape.png", landscape))
    still_serving(client)


def test_several_faces(client, make_file, photos):
    group = Image.new("RGB", (900, 560), (210, 210, 210))
    group.paste(Image.open(photos[1]).resize((356, 436)), (460, 60))
    group.paste(Image.open(photos[2]), (60, 170))
    _, info = encode(client, make_file("group.jpg", group))
    assert "2 faces found; editing the largest" in info


def test_grayscale(client, make_file, photos):
    aligned, info = encode(client, make_file("gray.jpg", Image.open(photos[0]).convert("L")))
    pixels = crop_array(aligned)
    assert np.abs(pixels[..., 0] - pixels[..., 1]).max() <= 2 and "bits/dim" in info


def test_cmyk(client, make_file, photos):
    aligned, _ = encode(client, make_file("cmyk.jpg", Image.open(photos[0]).convert("CMYK")))
    assert crop_array(aligned).std() > 10


def test_rgba(client, make_file, photos):
    rgba = Image.open(photos[0]).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size).point(lambda v: 255 if v > 30 else 0))
    aligned, _ = encode(client, make_file("alpha.png", rgba))
    assert Image.open(aligned).mode == "RGB"


def test_16_bit(client, make_file, photos):
    gray = np.asarray(Image.open(photos[0]).convert("L"), np.uint16) * 257
    img = Image.fromarray(gray.astype(np.uint16))
    assert img.mode.startswith("I;16")
    aligned, _ = encode(client, make_file("deep.png", img))
    assert crop_array(aligned).max() > 150  # rescaled from 16 bits, not clipped to white or crushed to black


def test_exif_rotated(client, make_file, photos):
    upright = Image.open(photos[0]).convert("RGB").resize((356, 436))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # how a camera stores a portrait shot on its side
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = make_file("portrait.jpg", stored, exif=exif.tobytes())
    assert Image.open(path).size == (436, 356)
    aligned, _ = encode(client, path)  # the detector only finds upright faces: this works only if EXIF is used
    assert Image.open(aligned).size == (256, 256)


def test_animated_gif(client, make_file, photos):
    rng = np.random.default_rng(1)
    face = Image.open(photos[0]).convert("RGB")
    noise = Image.fromarray(rng.integers(0, 256, (face.height, face.width, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    face.save(buffer, format="GIF", save_all=True, append_images=[noise], duration=200, loop=0)
    aligned, _ = encode(client, make_file("animated.gif", buffer.getvalue()))
    assert Image.open(aligned).size == (256, 256)

"""The editor under abuse, through the same path a browser or API call takes (`python app.py` in a subprocess, driven
with gradio_client): every bad file and every bad number gets a clear message naming the problem, the app keeps
serving, and decompression bombs do not grow its memory."""
from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app.limits import LIMITS
from tests.editor_support import file_writer, full_size_faces, serve_app


@pytest.fixture(scope="module")
def app(celeba_dir: Path, tmp_path_factory):
    yield from serve_app(celeba_dir, tmp_path_factory, "abuse_log")


@pytest.fixture(scope="module")
def client(app, tmp_path_factory) -> Client:
    return Client(app.url, verbose=False, analytics_enabled=False,
                  download_files=str(tmp_path_factory.mktemp("abuse_downloads")))


@pytest.fixture(scope="module")
def face(celeba_dir: Path) -> Image.Image:
    return Image.open(full_size_faces(celeba_dir, 1)[0]).convert("RGB")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return file_writer(tmp_path_factory.mktemp("abuse_files"))


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG of a few hundred bytes declaring width x height: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg(img: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", **save)
    return buffer.getvalue()


def encode(client: Client, path: str):
    return client.predict(handle_file(path), api_name="/encode")


def serving(client: Client) -> None:
    assert len(client.predict(0.5, 1, 1, api_name="/sample")) == 1


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# -- bad files: (name, bytes or a function of the face photo, the message expected) ------------------------------
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200"><circle cx="100" cy="100" r="80"/></svg>'
BAD_FILES = {
    "zero_bytes": ("empty.jpg", lambda f: b"", "empty \\(0 bytes\\)"),
    "truncated_jpeg": ("cut.jpg", lambda f: jpeg(f)[:2000], "truncated or corrupt"),
    "html_as_png": ("page.png", lambda f: b"<!doctype html><html><body><h1>hi</h1></body></html>\n" * 10,
                    "not an image"),
    "svg": ("drawing.svg", lambda f: SVG, "not an image"),
    "text_file": ("notes.txt", lambda f: b"dear diary\n" * 100, "not an image"),
    "one_pixel": ("dot.png", lambda f: Image.new("RGB", (1, 1)), "only 1x1 pixels"),
    "ten_thousand_by_ten": ("strip.png", lambda f: Image.new("RGB", (10000, 10)), "only 10000x10 pixels"),
    "png_40_megapixels": ("bomb.png", lambda f: png_declaring(8000, 5000), "40 megapixels.*limit is 16"),
    "png_bomb_900_megapixels": ("huge.png", lambda f: png_declaring(30000, 30000), "too large|megapixels"),
    "no_face": ("noise.png", lambda f: Image.fromarray(np.random.default_rng(0).integers(0, 256, (240, 320, 3),
                                                                                        dtype=np.uint8)),
                "no face found: use a photo"),
    "gzip_in_a_jpg": ("archive.jpg", lambda f: zlib.compress(b"\0" * 100000), "not an image"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_gets_a_clear_message(client, files, face, case):
    name, make, message = BAD_FILES[case]
    with pytest.raises(AppError, match=message):
        encode(client, files(name, make(face)))
    serving(client)


# -- odd but usable files: converted and encoded ----------------------------------------------------------------
def animated(face: Image.Image) -> bytes:
    buffer = io.BytesIO()
    face.save(buffer, format="GIF", save_all=True, append_images=[Image.new("RGB", face.size)], duration=100, loop=0)
    return buffer.getvalue()


def palette_with_transparency(face: Image.Image) -> Image.Image:
    img = face.convert("P", palette=Image.Palette.ADAPTIVE, colors=200)
    img.info["transparency"] = 0
    return img


def huge_exif(face: Image.Image) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x010E] = "x" * 60000  # ImageDescription: the most a JPEG APP1 segment holds
    exif[0x0112] = 1
    face.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


USABLE = {
    "animated_gif": ("anim.gif", animated),
    "png_16_bit": ("deep.png", lambda f: Image.fromarray(np.asarray(f.convert("L"), np.uint16) * 257)),
    "cmyk_jpeg": ("cmyk.jpg", lambda f: jpeg(f.convert("CMYK"))),
    "palette_with_transparency": ("pal.png", palette_with_transparency),
    "huge_exif": ("exif.jpg", huge_exif),
}


@pytest.mark.parametrize("case", list(USABLE))
def test_odd_but_usable_file_is_encoded(client, files, face, case):
    name, make = USABLE[case]
    aligned, info = encode(client, files(name, make(face)))
    assert Image.open(aligned).size == (256, 256) and "bits/dim" in info


def test_large_jpeg_is_decoded_at_reduced_scale(client, files, face):
    canvas = Image.new("RGB", (8000, 5000), (120, 130, 140))  # 40 megapixels, a few hundred KB as a JPEG
    canvas.paste(face.resize((2000, 2450)), (3000, 1200))
    aligned, info = encode(client, files("big.jpg", jpeg(canvas, quality=70)))
    assert "decoded at 1/2 scale (4000x2500)" in info
    assert Image.open(aligned).size == (256, 256)


def test_upload_over_the_size_limit_is_refused(client, files, face):
    data = jpeg(face) + b"\0" * (LIMITS.upload_bytes + 1)
    with pytest.raises(ValueError, match="exceeds the maximum file size"):
        encode(client, files("huge.jpg", data))
    serving(client)


def test_a_path_string_is_never_read(client):
    for payload in ("/etc/passwd", {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}):
        with pytest.raises(Exception) as caught:
            client.predict(payload, api_name="/encode")
        assert "root:" not in str(caught.value)
    serving(client)


def test_a_path_string_gets_the_projects_message(client):
    """Not Gradio's "Input should be a valid dictionary or instance of ImageData": what was sent and what to use."""
    with pytest.raises(AppError) as caught:
        client.predict("me.jpg", api_name="/encode")
    assert str(caught.value).startswith("Your photo must be an uploaded file (in Python: "
                                        "gradio_client.handle_file('photo.jpg')), not the string 'me.jpg'; a path on "
                                        "the server is never read"), str(caught.value)
    serving(client)


# -- bad numbers and types from API callers -------------------------------------------------------------------
@pytest.fixture(scope="module")
def encoded(client, face, files):
    encode(client, files("face.jpg", jpeg(face)))
    return client


BAD_CALLS = {
    "frames_negative": ("/interpolate", lambda a: (a, a, -3, False), "frames must be in 2..32"),
    "frames_huge": ("/interpolate", lambda a: (a, a, 10**9, False), "frames must be in 2..32"),
    "frames_fraction": ("/interpolate", lambda a: (a, a, 7.5, False), "frames must be a whole number"),
    "frames_text": ("/interpolate", lambda a: (a, a, "8", False), "frames must be a whole number"),
    "spherical_text": ("/interpolate", lambda a: (a, a, 8, "yes"), "spherical must be true or false"),
    "face_b_not_a_file": ("/interpolate", lambda a: (a, "/etc/passwd", 8, False),
                          "Face B must be an uploaded file \\(in Python: gradio_client.handle_file"),
    "custom_photo_not_a_file": ("/custom_slider", lambda a: ("Paths", [a, a, "me.jpg"], [a] * 3, []),
                                "Faces with it must be an uploaded file .*not the string 'me.jpg'"),
    "temperature_negative": ("/sample", lambda a: (-0.5, 0, 4), "temperature must be in \\[0, 1\\]"),
    "temperature_text": ("/sample", lambda a: ("hot", 0, 4), "temperature must be a number"),
    "seed_1e30": ("/sample", lambda a: (0.7, 1e30, 4), "seed must be in 0.."),
    "seed_negative": ("/sample", lambda a: (0.7, -1, 4), "seed must be in 0.."),
    "count_zero": ("/sample", lambda a: (0.7, 0, 0), "count must be in 1..32"),
    "count_huge": ("/sample", lambda a: (0.7, 0, 100000), "count must be in 1..32"),
    "count_none": ("/sample", lambda a: (0.7, 0, None), "count must be a whole number"),
    "edit_value_huge": ("/edit", lambda a: ({"Smiling": 1e6}, "classifier", [], "all levels"),
                        "edits\\['Smiling'\\] must be in \\[-10, 10\\]"),
    "edit_value_text": ("/edit", lambda a: ({"Smiling": "lots"}, "classifier", [], "all levels"),
                        "edits\\['Smiling'\\] must be a number"),
    "edits_as_list": ("/edit", lambda a: (["Smiling", 1.0], "classifier", [], "all levels"),
                      "edits must be a JSON object"),
    "keep_as_string": ("/edit", lambda a: ({"Smiling": 1.0}, "classifier", "Male", "all levels"),
                       "keep \\(attributes to keep fixed\\) must be a list of names"),
    "unknown_slider": ("/edit", lambda a: ({"Happiness": 1.0}, "classifier", [], "all levels"),
                       "unknown edit 'Happiness'"),
    "custom_too_many_photos": ("/custom_slider", lambda a: ("Too many", [a] * (LIMITS.custom_photos + 1), [a] * 3, []),
                               f"at most {LIMITS.custom_photos} photos per side"),
    "custom_name_too_long": ("/custom_slider", lambda a: ("x" * 500, [a] * 3, [a] * 3, []),
                             "at most 60 characters"),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_number_or_type_gets_a_message_naming_the_field(encoded, files, face, case):
    endpoint, make, message = BAD_CALLS[case]
    a = handle_file(files("a.jpg", jpeg(face)))
    with pytest.raises(AppError, match=message):
        encoded.predict(*make(a), api_name=endpoint)
    serving(encoded)


def call_raw(app, endpoint: str, body: str) -> str:
    """POST a JSON body as text (JSON allows what Python's json writes for NaN and inf, and 1e999) to Gradio's
    call API and return the event stream's text: a client that is not gradio_client."""
    request = urllib.request.Request(f"{app.url}gradio_api/call/{endpoint}", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            event = json.loads(response.read())["event_id"]
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code}: {err.read().decode(errors='replace')}"
    with urllib.request.urlopen(f"{app.url}gradio_api/call/{endpoint}/{event}", timeout=30) as response:
        return response.read().decode(errors="replace")


@pytest.mark.parametrize("body, field", [
    ('{"data": [NaN, 0, 4]}', "temperature must be a finite number"),
    ('{"data": [Infinity, 0, 4]}', "temperature must be a finite number"),
    ('{"data": [1e999, 0, 4]}', "temperature must be a finite number"),
    ('{"data": [0.5, NaN, 4]}', "seed must be a whole number"),
])
def test_non_finite_numbers_from_raw_http(app, client, body, field):
    answer = call_raw(app, "sample", body)
    print(body, "->", answer.strip().splitlines()[-1][:160])
    assert field in answer or answer.startswith("HTTP 4"), answer
    serving(client)


def test_non_finite_edit_value_from_raw_http(app, client):
    answer = call_raw(app, "edit", '{"data": [{"Smiling": NaN}, "classifier", [], "all levels"]}')
    assert "must be a finite number" in answer or answer.startswith("HTTP 4"), answer
    serving(client)


def test_interpolation_error_names_the_face(client, files, face):
    a, b = handle_file(files("a.jpg", jpeg(face))), handle_file(files("b.txt", b"not a face\n"))
    with pytest.raises(AppError, match="face B: the file is not an image"):
        client.predict(a, b, 4, False, api_name="/interpolate")


def test_edit_reports_the_strength_it_applied(encoded):
    _, message = encoded.predict({"Smiling": 3.0}, "classifier", [], "all levels", api_name="/edit")
    assert "of the requested strength (Smiling +" in message
    strength = float(message.split("Applied ")[1].split("%")[0])
    assert 0.0 <= strength <= 100.0


def test_memory_stays_bounded_under_decompression_bombs(app, client, files):
    """20 bomb uploads (a few hundred bytes declaring 40 and 900 megapixels, and a 16-megapixel PNG of zeros that
    is under the limit and really decodes) grow the server's resident memory by at most 200 MB."""
    bombs = [files("b40.png", png_declaring(8000, 5000)), files("b900.png", png_declaring(30000, 30000))]
    flat = Image.new("RGB", (4000, 3999))
    bombs.append(files("flat16.png", flat, compress_level=9))
    for path in bombs:  # warm up: the first decode of each kind allocates its pools
        with pytest.raises(AppError):
            encode(client, path)
    before = rss_mb(app.proc.pid)
    for i in range(20):
        with pytest.raises(AppError):
            encode(client, bombs[i % len(bombs)])
    growth = rss_mb(app.proc.pid) - before
    print(f"resident memory: {before:.0f} MB before, growth {growth:+.0f} MB over 20 bomb uploads")
    assert growth <= 200, f"resident memory grew by {growth:.0f} MB over 20 bomb uploads"
    serving(client)


def test_concurrency_policy_matches_the_code(celeba_dir, tmp_path_factory):
    """Every event that runs the model shares one group of workers(threads) slots; the rest are unlimited."""
    from app.server import MODEL_GROUP, apply_concurrency
    from app.service import EditorService
    from app.ui import EditorUI
    from tests.editor_support import build_assets

    service = EditorService.load(build_assets(celeba_dir, tmp_path_factory.getbasetemp()))
    demo = EditorUI(service).build()
    policy = apply_concurrency(demo, 1)
    model = {fn.api_name for fn in demo.fns.values() if fn.concurrency_id == MODEL_GROUP and fn.api_name}
    assert {"encode", "edit", "interpolate", "sample", "custom_slider", "whole_photo"} <= model
    assert all(fn.concurrency_limit == 1 for fn in demo.fns.values() if fn.concurrency_id == MODEL_GROUP)
    assert policy["render"] == MODEL_GROUP and policy["scrub"] != MODEL_GROUP

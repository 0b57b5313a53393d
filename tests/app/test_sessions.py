"""The per-request deadline and per-session temporary files, through the served app (`app.server.build_demo`, the
Blocks `python app.py` launches, run in this process so its limits and temp folder can be chosen) and driven with
gradio_client over HTTP, as an API caller would; and the file bookkeeping on its own."""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from app.limits import Deadline, LimitError, Limits
from app.server import build_demo
from app.service import DECODE_BATCH, EditorService
from app.session_files import SessionFiles
from tests.editor_support import free_port, full_size_faces


@pytest.fixture(scope="module")
def photos(celeba_dir: Path) -> list[str]:
    return [str(p) for p in full_size_faces(celeba_dir, 2)]


@contextmanager
def served(service: EditorService, limits: Limits, cache: Path):
    """The app on a free port with Gradio's temp folder at cache and a fast heartbeat (a closed client is seen as
    a session end within a fraction of a second instead of 15 s)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("GRADIO_TEMP_DIR", str(cache))
        env.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.2")
        demo = build_demo(service, [], limits, 1)
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                    show_error=True, max_file_size=limits.upload_bytes)
        try:
            yield f"http://127.0.0.1:{port}/"
        finally:
            demo.close()


def connect(url: str) -> Client:
    """download_files=False: file outputs come back as the server's own paths, which the tests look for on disk."""
    return Client(url, verbose=False, analytics_enabled=False, download_files=False)


# -- the deadline ----------------------------------------------------------------------------------------------
def test_an_expired_deadline_ends_interpolation_and_sampling_with_a_clear_message(service, photos, tmp_path):
    """request_seconds=0: every request is past its deadline at the first safe point."""
    with served(service, Limits(request_seconds=0), tmp_path / "cache") as url:
        client = connect(url)
        try:
            with pytest.raises(AppError, match=r"the interpolation took longer than the 0 s a request may take "
                                               r"\(request_seconds\); try again with fewer frames"):
                client.predict(handle_file(photos[0]), handle_file(photos[1]), 4, False, api_name="/interpolate")
            with pytest.raises(AppError, match=r"sampling took longer than the 0 s .*ask for fewer samples"):
                client.predict(0.5, 0, 4, api_name="/sample")
            with pytest.raises(AppError, match=r"encoding the photo took longer than the 0 s"):
                client.predict(handle_file(photos[0]), api_name="/encode")
        finally:
            client.close()


def test_the_same_requests_finish_within_the_default_deadline(service, photos, tmp_path):
    with served(service, Limits(), tmp_path / "cache") as url:
        client = connect(url)
        try:
            frames = client.predict(handle_file(photos[0]), handle_file(photos[1]), 4, False,
                                    api_name="/interpolate")[0]
            assert len(frames) == 4
            assert len(client.predict(0.5, 0, 4, api_name="/sample")) == 4
        finally:
            client.close()


class Countdown:
    """A check that passes `allowed` times and then raises, counting its calls."""

    def __init__(self, allowed: int) -> None:
        self.allowed, self.calls = allowed, 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls > self.allowed:
            raise LimitError("time is up")


def test_sampling_checks_the_deadline_before_each_batch(service):
    n = 2 * DECODE_BATCH + 3
    passes = math.ceil(n / DECODE_BATCH)
    count = Countdown(passes)
    images = service.sample(n, 0.7, seed=5, check=count)
    assert count.calls == passes and images.shape[0] == n
    assert torch.equal(images, service.sample(n, 0.7, seed=5))  # the check changes nothing but when to stop
    late = Countdown(1)
    with pytest.raises(LimitError, match="time is up"):
        service.sample(n, 0.7, seed=5, check=late)
    assert late.calls == 2  # the first batch ran, the second was refused


def test_interpolation_checks_the_deadline_between_frame_batches(service, photos):
    a, b = service.face_from_image(photos[0]), service.face_from_image(photos[1])
    n = DECODE_BATCH + 1
    count = Countdown(2)
    assert len(service.interpolate_faces(a, b, n, check=count)) == n and count.calls == 2
    with pytest.raises(LimitError):
        service.interpolate_faces(a, b, n, check=Countdown(1))


def test_a_deadline_is_past_once_its_seconds_have_gone():
    with pytest.raises(LimitError, match="the fit took longer than the 0 s a request may take"):
        Deadline(0, "the fit").check()
    Deadline(60, "the fit").check()


# -- temporary files of a session ----------------------------------------------------------------------------------
def test_session_files_are_deleted_when_the_session_ends_and_shared_ones_when_the_last_ends(tmp_path):
    cache = tmp_path / "cache"
    files = {}
    for name in ("a_only", "b_only", "shared", "example"):
        files[name] = cache / f"hash_{name}" / "image.png"
        files[name].parent.mkdir(parents=True)
        files[name].write_bytes(b"x")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"x")
    tracked = SessionFiles(cache, protected=lambda: {str(files["example"])})
    tracked.record("A", [{"path": str(files["a_only"])}, {"image": {"path": str(files["shared"])}},
                         {"path": str(files["example"])}, {"path": str(outside)}, "text", 3])
    tracked.record("B", {"value": [{"path": str(files["shared"])}, {"path": str(files["b_only"])}]})
    assert tracked.end("A") == [files["a_only"]]
    assert not files["a_only"].parent.exists()  # its emptied hash folder too
    assert all(files[n].exists() for n in ("b_only", "shared", "example")) and outside.exists()
    assert sorted(tracked.end("B")) == sorted([files["b_only"], files["shared"]])
    assert files["example"].exists() and outside.exists() and cache.is_dir()
    assert tracked.end("B") == [] and tracked.end(None) == []


def cached_files(cache: Path) -> set[Path]:
    """The files under cache now; os.walk skips a folder the server removes while it is being listed (rglob raises)."""
    return {Path(root) / name for root, _, names in os.walk(cache) for name in names}


def wait_until(condition, seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


def test_a_closed_session_leaves_no_files_and_another_session_keeps_its_own(service, photos, tmp_path):
    cache = tmp_path / "cache"
    with served(service, Limits(), cache) as url:
        a, b = connect(url), connect(url)
        try:
            shared = a.predict(handle_file(photos[0]), api_name="/encode")[0]["path"]
            a_sample = a.predict(0.5, 1, 1, api_name="/sample")[0]["image"]["path"]
            a_files = cached_files(cache)
            assert Path(shared) in a_files and Path(a_sample) in a_files
            assert b.predict(handle_file(photos[0]), api_name="/encode")[0]["path"] == shared  # content-addressed
            b_face = b.predict(handle_file(photos[1]), api_name="/encode")[0]["path"]
            b_edit = b.predict({"Smiling": 1.0}, "classifier", [], "all levels", api_name="/edit")[0]["path"]
            b_files = cached_files(cache) - a_files
            assert {Path(b_face), Path(b_edit)} <= b_files

            a.close()
            assert wait_until(lambda: not Path(a_sample).exists()), "session A's sample outlived the session"
            assert all(p.exists() for p in b_files), "session B lost files when A ended"
            assert Path(shared).exists(), "a file both sessions hold was deleted when one of them ended"
            # Uploads are content-addressed too: B's upload of the same photo is A's file, and B still holds it.
            upload = [p for p in a_files if p.name == Path(photos[0]).name]
            assert len(upload) == 1
            assert {p for p in a_files if p.exists()} == {Path(shared), upload[0]}, \
                "files only session A sent or received are still there"
            again = b.predict({"Smiling": -1.0}, "classifier", [], "all levels", api_name="/edit")[0]["path"]
            assert Path(again).exists()

            b.close()
            assert wait_until(lambda: not cached_files(cache)), \
                f"files left after both sessions ended: {sorted(map(str, cached_files(cache)))}"
        finally:
            a.close()
            b.close()


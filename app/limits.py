"""Every server-side limit of the editor, in one place (the README's "Limits and concurrency" table lists them).

`Limits` is read by the server (upload size, queue, concurrency, temp files), the UI's handlers (numbers from API
callers, photos per custom slider, the per-request deadline) and `flow_model.imaging.load_image` (bytes, pixels).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

from flow_model.imaging import MAX_FILE_BYTES, MAX_PIXELS


@dataclass(frozen=True)
class Limits:
    upload_bytes: int = MAX_FILE_BYTES  # Gradio refuses a larger upload before storing it (launch max_file_size)
    pixels: int = MAX_PIXELS  # declared pixels: non-JPEG refused above this before decoding; JPEG decoded smaller
    custom_photos: int = 12  # photos per side of a custom slider (with / without)
    frames: int = 32  # interpolation frames
    samples: int = 32  # faces per /sample call
    slider_value: float = 10.0  # |value| of one edit; the UI's sliders stop at 2
    edits: int = 64  # sliders in one /edit call
    keep: int = 64  # attributes held fixed in one call
    seed: int = 2**63 - 1  # torch.Generator seeds are 64-bit
    name_chars: int = 60  # a custom slider's name
    request_seconds: float = 60.0  # per-request deadline, checked between photos and before each model pass
    queue_size: int = 64  # waiting requests over all users; beyond this a caller is told the queue is full
    cache_sweep_seconds: int = 300  # Gradio's delete_cache: every 5 minutes ...
    cache_age_seconds: int = 1800  # ... files older than 30 minutes are deleted (and all of them at exit)


LIMITS = Limits()


class LimitError(ValueError):
    """An input outside a limit; the message names the field, what was sent and what is allowed."""


def workers(threads: int, cores: int | None = None) -> int:
    """Model requests run at once: workers x threads never exceeds the cores."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, threads))


def integer(field: str, value, low: int, high: int) -> int:
    """An integer API input: an int, or a float with no fraction (JSON and sliders send 8.0); finite, in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LimitError(f"{field} must be a whole number in {low}..{high}, got {type(value).__name__} {value!r}"[:200])
    if isinstance(value, float) and not (math.isfinite(value) and value == int(value)):
        raise LimitError(f"{field} must be a whole number in {low}..{high}, got {value!r}")
    if not low <= value <= high:
        raise LimitError(f"{field} must be in {low}..{high}, got {value:g}" if isinstance(value, float)
                         else f"{field} must be in {low}..{high}, got {value}")
    return int(value)


def number(field: str, value, low: float, high: float) -> float:
    """A finite real API input in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LimitError(f"{field} must be a number in [{low:g}, {high:g}], got {type(value).__name__} {value!r}"[:200])
    value = float(value)
    if not math.isfinite(value):
        raise LimitError(f"{field} must be a finite number in [{low:g}, {high:g}], got {value}")
    if not low <= value <= high:
        raise LimitError(f"{field} must be in [{low:g}, {high:g}], got {value:g}")
    return value


def names(field: str, value, limit: int) -> list[str]:
    """A list of strings (None -> []); a bare string is refused, not split into letters."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or \
            not all(isinstance(v, str) for v in value):
        raise LimitError(f'{field} must be a list of names, e.g. ["Male"], got {type(value).__name__} {value!r}'[:200])
    if len(value) > limit:
        raise LimitError(f"{field} may name at most {limit}, got {len(value)}")
    return list(value)


class Deadline:
    """A per-request time limit. Gradio cannot stop a running handler, so the service calls `check` at safe points
    (before each model pass, between batches, frames and photos) and a request past its time ends there with a
    message instead of holding a worker; a deadline of 0 s is already past."""

    def __init__(self, seconds: float, what: str, hint: str = "try again when the server is less busy") -> None:
        self.end = time.monotonic() + seconds
        self.seconds = seconds
        self.what = what
        self.hint = hint

    def check(self) -> None:
        """Raise LimitError once the time is up."""
        if time.monotonic() >= self.end:
            raise LimitError(f"{self.what} took longer than the {self.seconds:g} s a request may take "
                             f"(request_seconds); {self.hint}")


# -- what each endpoint accepts, checked before its handler runs (app.server.guard_inputs wires these) ------------
def _photo(field: str, value) -> None:
    if value is not None and not isinstance(value, dict):
        sent = f"the string {value!r}"[:120] if isinstance(value, str) else f"a {type(value).__name__}"
        raise LimitError(f"{field} must be an uploaded file (in Python: gradio_client.handle_file('photo.jpg')), not "
                         f"{sent}; a path on the server is never read")


def file_payload(field: str, value) -> None:
    """An image or file input as sent, before Gradio validates it: an uploaded file's description (a dict), or a
    list of them for a multi-file input. A path string gets this message, not Gradio's validation error."""
    for item in value if isinstance(value, (list, tuple)) else [value]:
        _photo(field, item)


def _files(field: str, value, limit: int) -> None:
    if value is None:
        return
    if isinstance(value, (str, dict)) or not isinstance(value, (list, tuple)):
        raise LimitError(f"{field} must be a list of uploaded files, got {type(value).__name__}")
    if len(value) > limit:
        raise LimitError(f"{field}: at most {limit} photos per side of a custom slider, got {len(value)}; "
                         "5-12 clear face photos each work best")


def _values(field: str, values, limits: Limits) -> None:
    for i, v in enumerate(values):
        number(f"{field} {i + 1}", 0.0 if v is None else v, -limits.slider_value, limits.slider_value)


def check_encode(limits: Limits, photo, model_output=False, *rest) -> None:
    _photo("photo", photo)


def _flag(field: str, value) -> None:
    if value is not None and not isinstance(value, bool):
        raise LimitError(f"{field} must be true or false, got {type(value).__name__} {value!r}"[:200])


def check_render(limits: Limits, face, custom, slots, method, disentangle, local, keep, levels, model_output,
                 *values) -> None:
    _flag("local", local)
    names("attributes to keep fixed", keep, limits.keep)
    _values("slider", values, limits)


def check_edit(limits: Limits, face, custom, edits, method, keep, levels) -> None:
    if not isinstance(edits, dict):
        raise LimitError('edits must be a JSON object {slider label or attribute: value}, e.g. {"Smiling": 1.0}, '
                         f"got {type(edits).__name__}")
    if len(edits) > limits.edits:
        raise LimitError(f"edits may set at most {limits.edits} sliders, got {len(edits)}")
    for key, value in edits.items():
        number(f"edits[{key!r}]", value, -limits.slider_value, limits.slider_value)
    if method is not None and not isinstance(method, str):
        raise LimitError(f"method must be a string, got {type(method).__name__}")
    names("keep (attributes to keep fixed)", keep, limits.keep)


def check_custom(limits: Limits, name, with_files, without_files, custom, slots, keep, *rest) -> None:
    """rest: what Gradio adds after the inputs (the request, the progress tracker), not checked."""
    if name is not None and not isinstance(name, str):
        raise LimitError(f"the slider name must be text, got {type(name).__name__}")
    if name and len(name) > limits.name_chars:
        raise LimitError(f"the slider name may have at most {limits.name_chars} characters, got {len(name)}")
    _files("photos with the property", with_files, limits.custom_photos)
    _files("photos without the property", without_files, limits.custom_photos)
    names("keep (attributes to keep fixed)", keep, limits.keep)


def check_interpolate(limits: Limits, a, b, frames, spherical) -> None:
    _photo("face A", a)
    _photo("face B", b)
    integer("frames", frames, 2, limits.frames)
    _flag("spherical", spherical)


def check_sample(limits: Limits, temperature, seed, count) -> None:
    number("temperature", temperature, 0.0, 1.0)
    integer("seed", seed, 0, limits.seed)
    integer("count", count, 1, limits.samples)


CHECKS = {"encode": check_encode, "render": check_render, "whole_photo": check_render, "api_edit": check_edit,
          "custom_slider": check_custom, "interpolate": check_interpolate, "sample": check_sample}

"""Load a model into an EditorService, draw the example faces and serve the UI, offline."""
from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import torch
from gradio.utils import get_upload_folder

from flow_model.device import resolve_device
from flow_model.imaging import to_pil

from . import default_threads
from .limits import CHECKS, LIMITS, LimitError, Limits, file_payload, workers
from .service import EditorService
from .session_files import SessionFiles
from .threads import fastest, time_thread_counts
from .ui import EditorUI

log = logging.getLogger(__name__)

EXAMPLE_TEMPERATURE = 0.6  # typical-looking faces; T = 1 samples are noisier
EXAMPLE_SEED = 0


@dataclass
class ServerOptions:
    model: str = "assets/celeba64"
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    threads: int | None = None  # None: the count that decodes fastest here, measured at start-up (choose_threads)
    examples: int = 6
    limits: Limits = LIMITS


def example_faces(service: EditorService, n: int, folder: Path) -> list[str]:
    """Model samples as model-size PNGs: one-click faces with no licence question (no dataset images shipped),
    and always from the model being served."""
    if n == 0:
        return []
    paths = []
    for i, x in enumerate(service.sample(n, EXAMPLE_TEMPERATURE, EXAMPLE_SEED)):
        path = folder / f"example_{i}.png"
        to_pil(x).save(path)
        paths.append(str(path))
    return paths


# Events that run the model share one concurrency group of workers(threads) slots; everything else (scrubbing the
# frame strip, picking a sample, adding a slider slot, switching tabs) is bookkeeping and runs without a limit.
MODEL_EVENTS = {"encode", "render", "api_edit", "whole_photo", "custom_slider", "interpolate", "sample"}
MODEL_GROUP = "model"
# Events whose numbers reach the handler as sent (JSON), so guard_inputs names the field and the range; Gradio's own
# slider preprocessing would answer "Value -0.5 is less than minimum value 0.0." or fail on text without a message.
RAW_INPUT_EVENTS = {"sample"}


def apply_concurrency(demo, limit: int) -> dict[str, str]:
    """The stated concurrency policy, applied to the built Blocks: every model event in MODEL_GROUP with `limit`
    slots, the rest unlimited. Returns {function name: group} for the README and the tests."""
    policy = {}
    for block_fn in demo.fns.values():
        name = getattr(block_fn.fn, "__name__", "")
        if name in RAW_INPUT_EVENTS:
            block_fn.preprocess = False
        if name in MODEL_EVENTS:
            block_fn.concurrency_id, block_fn.concurrency_limit = MODEL_GROUP, limit
        else:
            block_fn.concurrency_id, block_fn.concurrency_limit = f"free-{block_fn._id}", None
        policy[name] = block_fn.concurrency_id
    return policy


def guard_inputs(demo, limits: Limits) -> None:
    """Every model event's inputs checked against limits (type, range, finite) before its handler runs, with a
    message naming the field. The handlers enforce limits.request_seconds themselves (EditorUI passes a Deadline's
    check to the service); a LimitError they raise becomes the same clear message, and a request that still ran
    long (one uninterruptible model pass) is logged."""
    import gradio as gr

    for block_fn in demo.fns.values():
        name = getattr(block_fn.fn, "__name__", "")
        check = CHECKS.get(name)
        if check is None:
            continue

        def guarded(*args, _fn=block_fn.fn, _check=check, _name=name):
            try:
                _check(limits, *args)
            except LimitError as err:
                raise gr.Error(str(err), duration=None) from None
            started = time.monotonic()
            failure = None
            try:
                return _fn(*args)
            except (gr.Error, LimitError) as err:
                # A fresh error without the old one's traceback: its frames hold the decoded photo (a 16-megapixel
                # image is 48 MB) and Gradio keeps failed events' exceptions around for a while.
                failure = gr.Error(err.message, duration=err.duration, visible=err.visible, title=err.title,
                                   print_exception=False) if isinstance(err, gr.Error) else \
                    gr.Error(str(err), duration=None, print_exception=False)
                for old in (err, err.__context__, err.__cause__):
                    if old is not None and old.__traceback__ is not None:
                        traceback.clear_frames(old.__traceback__)
                del err
            finally:
                elapsed = time.monotonic() - started
                if elapsed > limits.request_seconds:
                    log.warning("%s took %.1f s, over the %.0f s a request should take", _name, elapsed,
                                limits.request_seconds)
            raise failure

        functools.update_wrapper(guarded, block_fn.fn)
        block_fn.fn = guarded


def refuse_path_strings(demo) -> None:
    """A string (a path) sent as an image or file input gets the project's message (use
    gradio_client.handle_file) instead of Gradio's validation error, which runs before any handler: checked on
    the payload as sent, before Gradio's preprocessing."""
    preprocess_data = demo.preprocess_data

    async def checked(block_fn, inputs, *args, **kwargs):
        for block, value in zip(block_fn.inputs, inputs):
            if isinstance(block, (gr.Image, gr.File)):
                try:
                    file_payload(block.label or "the file", value)
                except LimitError as err:
                    raise gr.Error(str(err), duration=None, print_exception=False) from None
        return await preprocess_data(block_fn, inputs, *args, **kwargs)

    demo.preprocess_data = checked


def clean_up_sessions(demo, files: SessionFiles) -> None:
    """Delete a session's uploads and outputs when it ends (Gradio's unload event: the browser tab closes or a
    gradio_client Client is closed, seen by the heartbeat). Every request's payload and response is recorded
    against its session; delete_cache stays the backstop for files no event named (an upload never used)."""
    process_api = demo.process_api

    async def recorded(*args, **kwargs):
        session = kwargs.get("session_hash")
        files.record(session, kwargs.get("inputs"))
        output = await process_api(*args, **kwargs)
        files.record(session, output.get("data"))
        return output

    def end_session(request: gr.Request) -> None:
        removed = files.end(request.session_hash)
        log.info("session ended: %d temporary file(s) deleted", len(removed))

    demo.process_api = recorded
    demo.unload(end_session)


def kept_in_cache(demo) -> set[str]:
    """Files Gradio keeps for every session (the examples' cached copies)."""
    return set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()))


def build_demo(service: EditorService, examples: list[str], limits: Limits, slots: int):
    """The served app: the UI under the concurrency policy, the input guards and per-session cleanup, queued.
    Gradio's temporary folder (GRADIO_TEMP_DIR) must be set before this runs."""
    demo = EditorUI(service, examples, limits).build()
    demo.delete_cache = (limits.cache_sweep_seconds, limits.cache_age_seconds)
    clean_up_sessions(demo, SessionFiles(get_upload_folder(), lambda: kept_in_cache(demo)))
    apply_concurrency(demo, slots)
    guard_inputs(demo, limits)
    refuse_path_strings(demo)
    demo.queue(default_concurrency_limit=slots, max_size=limits.queue_size)
    return demo


class _Stop(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so Gradio closes its server and our finally-blocks run."""


def _on_signal(signum, frame):
    raise _Stop(f"signal {signum}")


def bound_malloc() -> None:
    """Let glibc give large freed buffers back to the system: a fixed mmap threshold (1 MB) stops its dynamic one
    from growing to 32 MB after a large decode (which keeps later ones on the heap, never returned), and two arenas
    per process stop every request thread from keeping its own. Without it 20 uploads of a 16-megapixel PNG left
    1.2 GB resident. A no-op where glibc is absent."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass


def choose_threads(service: EditorService) -> int:
    """The thread count (1 .. default_threads()) at which a slider update's decode is fastest on this machine."""
    candidates = list(range(1, default_threads() + 1))
    if len(candidates) == 1:
        return 1
    latent = 0.7 * torch.randn(service.model.latent_dim, generator=torch.Generator().manual_seed(0))
    medians = time_thread_counts(lambda: service.decode(latent), candidates)
    threads = fastest(medians)
    log.info("a batch-1 decode takes %s: %d thread(s) per request (--threads N overrides)",
             ", ".join(f"{m * 1000:.0f} ms at {n} thread(s)" for n, m in medians.items()), threads)
    return threads


def serve(options: ServerOptions) -> None:
    # Model requests share one group of cores // threads slots and the rest wait in the queue (at most
    # limits.queue_size): two multi-thread decodes side by side make their OpenMP threads wait on each other, while
    # one-thread requests run side by side. The thread count is measured (choose_threads) unless given.
    limits = options.limits
    bound_malloc()
    device = resolve_device(options.device)
    service = EditorService.load(options.model, device=str(device))
    log.info("model %s on %s: %d parameters, %d directions", options.model, device,
             service.model.num_parameters(), len(service.attributes))
    threads = options.threads if options.threads is not None else choose_threads(service)
    torch.set_num_threads(threads)
    # Uploads, outputs and examples live in one folder of this process, removed at exit, on SIGTERM and on Ctrl-C;
    # while serving, Gradio's delete_cache removes files older than limits.cache_age_seconds.
    folder = Path(tempfile.mkdtemp(prefix="face-editor-"))
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio")
    try:
        examples = example_faces(service, options.examples, folder)
        slots = workers(threads)
        demo = build_demo(service, examples, limits, slots)
        log.info("%d model request(s) at a time with %d thread(s) each; queue of %d; uploads up to %d MB",
                 slots, threads, limits.queue_size, limits.upload_bytes // 2**20)
        demo.launch(server_name=options.host, server_port=options.port, share=options.share,
                    footer_links=["api", "settings"], allowed_paths=[str(folder)],
                    max_file_size=limits.upload_bytes, show_error=True)
    except KeyboardInterrupt:
        log.info("stopping")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        shutil.rmtree(folder, ignore_errors=True)

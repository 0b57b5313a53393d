"""Editor latency on this machine's CPU: slider updates, align + encode of a photo, interpolation, app start-up.

    python bench/editor.py [--model assets/celeba64] [--updates 100] [--threads N] [--startup]

- slider update: what the server does per slider event: edit the latent (three sliders, two kept fixed),
  decode, upscale to display size and encode the image for the browser (Gradio's own gr.Image postprocess, which
  also hashes and writes it to the cache); p50/p95 over --updates updates with changing values.
- align + encode: a 1024x1024 JPEG photo with one face -> decode the file, detect, landmarks, warp, one flow pass
  (latent + bits/dim); plus the full upload handler, which also decodes the reconstruction.
- interpolation: 8 frames (one batched decode), upscaled, plus the animated GIF.
- start-up (--startup): `python app.py` until it answers HTTP 200.
Each figure is given as wall-clock and as process CPU time (see Timer). A missing model directory falls back to the shipped architecture with random weights (speed does not depend on
the weights) and random directions, and says so.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import flow_model  # noqa: F401  (first: sets OpenMP's wait policy before torch loads)
import torch
from PIL import Image

from app import default_threads
from app.align import FaceAligner
from app.directions import Directions, cosine_gram
from app.service import DIRECTIONS_FILE, SLIDERS, EditorService, animated_gif
from app.ui import DISPLAY_FORMAT
from flow_model.config import GlowConfig
from flow_model.glow import Glow

ROOT = Path(__file__).resolve().parents[1]
CELEBA = ROOT.parent / "shared" / "data" / "celeba"
SHIPPED = GlowConfig(image_size=64, n_bits=5, levels=3, depth=16, hidden=128)


class Timer:
    """Wall-clock and process CPU time of each timed section. On a shared, busy machine the CPU time is the better
    estimate of the latency on an idle one: it leaves out the time spent waiting for a core."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    @contextmanager
    def __call__(self):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall.append(time.perf_counter() - wall)
        self.cpu.append(time.process_time() - cpu)

    def summary(self) -> dict:
        def ms(values: list[float], q: float) -> float:
            return round(float(np.percentile(values, q * 100)) * 1000, 1)

        return {"wall_p50_ms": ms(self.wall, 0.5), "wall_p95_ms": ms(self.wall, 0.95),
                "cpu_p50_ms": ms(self.cpu, 0.5), "cpu_p95_ms": ms(self.cpu, 0.95), "n": len(self.wall)}


def load_service(model: Path, device: str, scratch: Path) -> tuple[EditorService, Path, str]:
    """The service, the model directory app.py can be started with, and a description of the model."""
    if model.is_dir():
        return EditorService.load(model, device=device), model, str(model)
    glow = Glow(SHIPPED, seed=0)
    noise = torch.Generator().manual_seed(0)
    glow.initialize(torch.randint(0, 256, (16, 3, 64, 64), dtype=torch.uint8, generator=noise))
    names = [s.attribute for s in SLIDERS] + [f"attribute_{i}" for i in range(40 - len(SLIDERS))]
    vectors = {m: torch.randn(40, glow.latent_dim, generator=noise) for m in ("mean_diff", "classifier")}
    directions = Directions(names, vectors, {m: cosine_gram(v) for m, v in vectors.items()},
                            {n: {} for n in names}, glow.latent_dim)
    glow.save_pretrained(scratch)
    directions.save(scratch / DIRECTIONS_FILE)
    service = EditorService(glow.to(device).eval(), directions, FaceAligner())
    return service, scratch, f"{model} is missing: the shipped architecture with random weights and directions"


def test_photo(size: int = 1024) -> bytes:
    """A 1024x1024 JPEG with one face about 40% of its width (a CelebA face when ../shared has one)."""
    faces = sorted((CELEBA / "img_align_celeba").glob("*.jpg")) if CELEBA.is_dir() else []
    big = [f for f in faces[:200] if Image.open(f).size == (178, 218)]
    if not big:
        raise SystemExit(f"need a face photo: the CelebA subset is not at {CELEBA}")
    face = Image.open(big[0]).convert("RGB").resize((round(size * 0.55), round(size * 0.55 * 218 / 178)))
    photo = Image.new("RGB", (size, size), (180, 170, 160))
    photo.paste(face, ((size - face.width) // 2, (size - face.height) // 3))
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=92)
    return buffer.getvalue()


def bench_slider(service: EditorService, face, updates: int, warmup: int = 5) -> dict:
    import gradio as gr

    output = gr.Image(format=DISPLAY_FORMAT)
    rng = np.random.default_rng(0)
    labels = ["Smiling", "Age", "Blond hair"]
    values = np.cumsum(rng.normal(0, 0.1, (warmup + updates, len(labels))), axis=0).clip(-2, 2)
    for row in values[:warmup]:
        output.postprocess(service.display(service.edit(face, dict(zip(labels, row))).image))
    timer = Timer()
    for row in values[warmup:]:
        with timer():
            edited = service.edit(face, dict(zip(labels, row)), keep=["Male", "Eyeglasses"])
            output.postprocess(service.display(edited.image))
    return timer.summary()


def bench_align_encode(service: EditorService, photo: bytes, repeats: int) -> tuple[dict, dict]:
    service.face_from_image(photo)  # warm-up (and the landmark predictor's background load)
    align_encode, full = Timer(), Timer()
    for _ in range(repeats):
        with align_encode():
            x, _, _ = service.prepare(photo)
            service._forward(x.unsqueeze(0))
        with full():
            service.face_from_image(photo)
    return align_encode.summary(), full.summary()


def bench_interpolate(service: EditorService, a, b, repeats: int) -> tuple[dict, dict]:
    service.interpolate(a.latent, b.latent, 8)
    frames, gif = Timer(), Timer()
    for _ in range(repeats):
        with frames():
            images = [service.display(x) for x in service.interpolate(a.latent, b.latent, 8)]
        with gif():
            animated_gif(images)
    return frames.summary(), gif.summary()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_startup(model: Path) -> dict:
    """Seconds from `python app.py` to its first HTTP 200, wall-clock and CPU (which is what 2 idle cores bound)."""
    port = 7900 + os.getpid() % 50
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py", "--model", str(model), "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
                    if response.status == 200:
                        return {"wall_s": round(time.perf_counter() - start, 1),
                                "cpu_s": round(process_cpu_seconds(proc.pid), 1)}
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"app.py exited with {proc.returncode} before serving")
    finally:
        proc.terminate()
        proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "assets" / "celeba64")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20, help="timed align + encode and interpolation runs")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch intra-op threads (app.py's default: 2, or 1 on a 1-core machine)")
    parser.add_argument("--startup", action="store_true", help="also time `python app.py` until it serves")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    scratch = Path(tempfile.mkdtemp(prefix="bench-editor-"))
    service, model_dir, source = load_service(args.model, args.device, scratch)
    photo = test_photo()
    with torch.inference_mode():
        face = service.face_from_image(photo)
        other = service.encode(service.sample(1, 0.7, seed=1)[0])
    load = os.getloadavg()
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
                   f"{torch.__version__}, {torch.get_num_threads()} threads, load average {load[0]:.1f} at start",
        "model": source,
        "slider_update": bench_slider(service, face, args.updates),
    }
    results["align_encode_1024"], results["upload_handler_1024"] = bench_align_encode(service, photo, args.repeats)
    results["interpolate_8_frames"], results["gif_of_8_frames"] = bench_interpolate(
        service, face, other, args.repeats)
    if args.startup:
        results["startup"] = bench_startup(model_dir)
    results["load_average_at_end"] = round(os.getloadavg()[0], 1)
    shutil.rmtree(scratch)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

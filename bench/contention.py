"""The editing service used from a script, beside a busy 2-thread PyTorch process (a training run, another job).

    python bench/contention.py [--model assets/celeba64] [--photos ../shared/data/photos] [--n 6]
                               [--modes entry,torch-first] [--busy-seconds 240]

For each mode a fresh child process loads the service and times align + encode + a Smiling edit + the display view of
each photo (a warm-up photo first), once on an otherwise idle machine and once while a synthetic 2-thread PyTorch
process (convolutions forward and backward, like a training step; OpenMP's default spin-waiting unless
--busy-policy says otherwise) keeps both cores busy. It prints the median and p95 per photo, side by side.

Modes:
- entry: the child imports `app` first, as every entry point does: OpenMP threads sleep while they wait
  (OMP_WAIT_POLICY=PASSIVE unless the environment sets it) and torch runs app.default_threads() threads.
- torch-first: the child imports torch before `app`, so OpenMP has read its (default, spinning) wait policy before
  the program could set it: how a script behaved before the entry points set it themselves.
- torch-first-thread: as torch-first, but the work runs in a second Python thread after the main thread has used
  torch (as the server's request threads do): libgomp then manages more threads than there are cores and throttles
  its spinning on its own.

Pause other jobs on the machine while it measures (e.g. `kill -STOP PID; python bench/contention.py; kill -CONT PID`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos"

BUSY = """
import sys, time, torch
torch.set_num_threads(2)
deadline = time.monotonic() + float(sys.argv[1])
conv = torch.nn.Sequential(torch.nn.Conv2d(64, 128, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(128, 64, 3, padding=1))
x = torch.randn(16, 64, 16, 16)
print("busy", flush=True)
while time.monotonic() < deadline:
    conv(x).square().mean().backward()
"""

CHILD = """
import json, os, statistics, sys, threading, time
mode, model, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
photos = sys.argv[4:]
if mode.startswith("torch-first"):
    import torch
    torch.ones(64, 64) @ torch.ones(64, 64)
import app
import torch
from app.service import EditorService
torch.set_num_threads(1 if mode.endswith("-1") else app.default_threads())

def work(out):
    service = EditorService.load(model)
    def once(path):
        t = time.perf_counter()
        face = service.face_from_image(path)
        service.view(face, service.edit(face, {"Smiling": 1.0}))
        return time.perf_counter() - t
    once(photos[0])
    out.extend(once(p) for p in photos[1:n + 1])

times = []
if mode.startswith("torch-first-thread"):
    t = threading.Thread(target=work, args=(times,))
    t.start(); t.join()
else:
    work(times)
print(json.dumps({"times": times, "threads": torch.get_num_threads(),
                  "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}))
"""


def child_env(mode: str, inherited_policy: bool) -> dict:
    env = dict(os.environ)
    if not inherited_policy:  # what the program does on its own, not what this shell happens to set
        env.pop("OMP_WAIT_POLICY", None)
        env.pop("OMP_NUM_THREADS", None)
    return env


def measure(mode: str, args, photos: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, args.model, str(args.n), *photos], cwd=ROOT,
                         env=child_env(mode, args.inherit_env), capture_output=True, text=True,
                         timeout=args.busy_seconds)
    if out.returncode != 0:
        raise RuntimeError(f"{mode} child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_busy(args) -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if args.busy_policy:
        env["OMP_WAIT_POLICY"] = args.busy_policy
    busy = subprocess.Popen([sys.executable, "-c", BUSY, str(args.busy_seconds)], env=env, stdout=subprocess.PIPE,
                            text=True)
    busy.stdout.readline()
    time.sleep(1.0)
    return busy


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/celeba64")
    parser.add_argument("--photos", default=str(PHOTOS))
    parser.add_argument("--n", type=int, default=6, help="photos timed per run (after one warm-up photo)")
    parser.add_argument("--modes", default="entry,torch-first")
    parser.add_argument("--busy-seconds", type=float, default=240.0, help="upper bound on the busy process's life")
    parser.add_argument("--busy-policy", default="", help="OMP_WAIT_POLICY of the busy process (default: unset)")
    parser.add_argument("--inherit-env", action="store_true",
                        help="keep this shell's OMP_WAIT_POLICY/OMP_NUM_THREADS in the children")
    args = parser.parse_args()
    photos = sorted(str(p) for p in Path(args.photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(photos) < args.n + 1:
        raise SystemExit(f"need {args.n + 1} photos in {args.photos}, found {len(photos)}")
    photos = photos[: args.n + 1]
    print(f"{os.cpu_count()} cores; busy process: 2 threads, OMP_WAIT_POLICY={args.busy_policy or 'unset'}; "
          f"align + encode + Smiling edit + view, {args.n} photos, seconds per photo")
    print("| mode | threads | idle p50 / p95 | beside busy p50 / p95 | ratio of medians |")
    print("|---|---|---|---|---|")
    results = {}
    for mode in args.modes.split(","):
        idle = measure(mode, args, photos)
        busy = start_busy(args)
        try:
            loaded = measure(mode, args, photos)
        finally:
            busy.kill()
            busy.wait()
        (i50, i95), (b50, b95) = summary(idle["times"]), summary(loaded["times"])
        results[mode] = {"idle": idle, "busy": loaded}
        print(f"| {mode} | {idle['threads']} | {i50:.3f} / {i95:.3f} | {b50:.3f} / {b95:.3f} | {b50 / i50:.1f}x |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

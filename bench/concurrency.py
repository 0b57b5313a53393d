"""16 concurrent clients against a local editor server: errors and latency per endpoint.

    python bench/concurrency.py [--model assets/celeba64] [--clients 16] [--rounds 3] [--seconds 300]

Starts `python app.py` on 127.0.0.1 (a free port; nothing else is contacted), then runs --clients threads, each its
own gradio_client session, each doing --rounds rounds of encode -> edit -> interpolate (4 frames) -> sample (4 faces)
on photos from ../shared/data/photos (client i starts at photo i). Prints, per endpoint, the calls, errors (must be 0)
and p50 / p95 latency as the client sees it (queue wait included), then stops the server. --seconds bounds the run.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.editor_support starts the server the way the tests do

from gradio_client import Client, handle_file  # noqa: E402

from tests.editor_support import AppProcess  # noqa: E402

PHOTOS = ROOT.parent / "shared" / "data" / "photos"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="assets/celeba64")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=300.0)
    args = parser.parse_args()
    photos = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    log = Path("/tmp") / f"concurrency_bench_{time.time_ns()}.log"
    server = AppProcess(ROOT / args.model, log)
    times: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, list[str]] = defaultdict(list)
    lock = threading.Lock()
    deadline = time.monotonic() + args.seconds

    def call(name: str, client: Client, *inputs):
        start = time.perf_counter()
        try:
            client.predict(*inputs, api_name=name)
            ok = True
        except Exception as err:  # noqa: BLE001 - counted and reported
            ok = False
            with lock:
                errors[name].append(f"{type(err).__name__}: {err}"[:200])
        with lock:
            if ok:
                times[name].append(time.perf_counter() - start)

    def user(i: int) -> None:
        client = Client(server.url, verbose=False, analytics_enabled=False, download_files=False)
        for r in range(args.rounds):
            if time.monotonic() > deadline:
                return
            a, b = photos[(i + r) % len(photos)], photos[(i + r + 1) % len(photos)]
            call("/encode", client, handle_file(str(a)))
            call("/edit", client, {"Smiling": 1.0, "Age": 0.5}, "classifier", [], "all levels")
            call("/interpolate", client, handle_file(str(a)), handle_file(str(b)), 4, False)
            call("/sample", client, 0.7, i * 10 + r, 4)

    try:
        started = time.perf_counter()
        threads = [threading.Thread(target=user, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, deadline - time.monotonic() + 60))
        wall = time.perf_counter() - started
    finally:
        server.stop()
    print(f"{args.clients} clients x {args.rounds} rounds in {wall:.1f} s; server log {log}")
    print("| endpoint | calls | errors | p50 s | p95 s |")
    print("|---|---|---|---|---|")
    for name in ("/encode", "/edit", "/interpolate", "/sample"):
        t = times[name]
        p50 = f"{statistics.median(t):.2f}" if t else "-"
        p95 = f"{percentile(t, 0.95):.2f}" if t else "-"
        print(f"| {name} | {len(t) + len(errors[name])} | {len(errors[name])} | {p50} | {p95} |")
    for name, errs in errors.items():
        for e in errs[:3]:
            print(f"  {name}: {e}")
    return 1 if any(errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

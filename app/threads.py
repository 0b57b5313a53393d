"""How many torch threads a request gets: measured on this machine at start-up, not assumed.

A slider update is one batch-1 decode: dozens of small convolutions, each a parallel region whose threads sleep in
between (OMP_WAIT_POLICY=PASSIVE, which keeps the editor fast beside other jobs). Whether a second thread pays for
waking it up depends on the CPU and the hypervisor: on a 2-core AMD EPYC VM two threads decoded faster, on a 2-core
Xeon VM one thread took 40 ms per slider update and two took 70 (bench/editor.py). So the server times the decode at
each candidate count and takes the fastest.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import torch

CLEAR_GAIN = 0.9  # more threads must be at least 10% faster: fewer threads let more requests run at once


def time_thread_counts(work: Callable[[], object], candidates: Sequence[int], repeats: int = 7,
                       warmup: int = 2) -> dict[int, float]:
    """Median seconds of `work` at each thread count, the counts alternating so that drift in the machine's speed
    hits all of them alike. Torch's thread count is restored afterwards."""
    if not candidates or any(n < 1 for n in candidates):
        raise ValueError(f"thread counts must be >= 1, got {list(candidates)}")
    previous = torch.get_num_threads()
    times: dict[int, list[float]] = {n: [] for n in candidates}
    try:
        for n in candidates:
            torch.set_num_threads(n)
            for _ in range(warmup):
                work()
        for _ in range(repeats):
            for n in candidates:
                torch.set_num_threads(n)
                start = time.perf_counter()
                work()
                times[n].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return {n: statistics.median(t) for n, t in times.items()}


def fastest(medians: dict[int, float]) -> int:
    """The fewest threads unless more are clearly faster (by CLEAR_GAIN)."""
    best = min(medians)
    for n in sorted(medians):
        if medians[n] < CLEAR_GAIN * medians[best]:
            best = n
    return best

"""The server's thread count is the fastest measured one; ties go to fewer threads; --threads parses or names the
problem."""
from __future__ import annotations

import argparse
import time

import pytest
import torch

from app.commands.serve import add_arguments
from app.threads import fastest, time_thread_counts


def work_taking(seconds_by_threads: dict[int, float]):
    """A stand-in for a decode whose duration depends on torch's current thread count."""
    calls = []

    def work() -> None:
        calls.append(torch.get_num_threads())
        time.sleep(seconds_by_threads[torch.get_num_threads()])

    return work, calls


def test_timing_alternates_the_counts_and_restores_torchs_own():
    before = torch.get_num_threads()
    work, calls = work_taking({1: 0.004, 2: 0.001})
    medians = time_thread_counts(work, [1, 2], repeats=3, warmup=1)
    assert calls == [1, 2, 1, 2, 1, 2, 1, 2]  # warm-ups, then alternating
    assert medians[1] == pytest.approx(0.004, abs=0.003) and medians[2] == pytest.approx(0.001, abs=0.003)
    assert medians[2] < medians[1] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="thread counts must be >= 1"):
        time_thread_counts(work, [0, 1])


def test_the_fastest_count_wins_only_when_clearly_faster():
    assert fastest({1: 0.040, 2: 0.070}) == 1  # the 2-core Xeon VM
    assert fastest({1: 0.054, 2: 0.045}) == 2  # the 2-core AMD VM
    assert fastest({1: 0.050, 2: 0.047}) == 1  # 6% is not worth a second core per request
    assert fastest({1: 0.050, 2: 0.040, 3: 0.038}) == 2


def test_threads_option_takes_auto_or_a_whole_number(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args([]).threads is None
    assert parser.parse_args(["--threads", "auto"]).threads is None
    assert parser.parse_args(["--threads", "1"]).threads == 1
    for bad in ("0", "two", "1.5"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--threads", bad])
        assert "must be 'auto' or a whole number >= 1" in capsys.readouterr().err

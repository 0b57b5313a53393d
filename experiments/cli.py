"""`python -m experiments COMMAND ...`: ablation (Flow++ pieces at equal wall-clock), pilot-report (compare runs),
leakage-floor (how much of a slider's leakage is the edit), latent-walk (a non-linear hold against the linear edits),
conditional-edits (edits fitted within each gender against the linear edits), train-gap (the train/held-out gap
between like faces), instruments (the same edits scored by several attribute classifiers)."""
from __future__ import annotations

import argparse

from flow_model.commands import build_parser as _build_parser, run_command

from .commands import (ablation, conditional_edits, instruments, latent_walk, leakage_floor, pilot_report,
                       train_gap)

COMMANDS = {"ablation": ablation, "pilot-report": pilot_report, "leakage-floor": leakage_floor,
            "latent-walk": latent_walk, "conditional-edits": conditional_edits, "train-gap": train_gap,
            "instruments": instruments}


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("python -m experiments", __doc__, COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), COMMANDS, argv)

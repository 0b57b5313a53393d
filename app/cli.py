"""`python -m app COMMAND ...`: serve (the editor; what `python app.py` runs), edit (photos from the
command line), directions (the sliders' vectors),
train-classifier (the attribute classifier that measures edits), evaluate-edits (what the sliders do, measured;
their calibration)."""
from __future__ import annotations

import argparse

from flow_model.commands import build_parser as _build_parser, run_command

from .commands import directions, edit, evaluate_edits, serve, train_classifier

COMMANDS = {"serve": serve, "edit": edit, "directions": directions, "train-classifier": train_classifier,
            "evaluate-edits": evaluate_edits}


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("python -m app", __doc__, COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), COMMANDS, argv)

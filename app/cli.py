"""`python -m app COMMAND ...`: serve (the editor; what `python app.py` runs), directions (the sliders' vectors)."""
from __future__ import annotations

import argparse

from flow_model.commands import build_parser as _build_parser, run_command

from .commands import directions, serve

COMMANDS = {"serve": serve, "directions": directions}


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("python -m app", __doc__, COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), COMMANDS, argv)

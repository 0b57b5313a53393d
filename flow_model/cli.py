"""`python -m flow_model COMMAND ...`: train, eval, sample, encode, decode, export."""
from __future__ import annotations

import argparse

from .commands import build_parser as _build_parser, decode, encode, export, run_command, sample
from .commands import eval as eval_command
from .training import command as train

COMMANDS = {"train": train, "eval": eval_command, "sample": sample, "encode": encode, "decode": decode,
            "export": export}


def build_parser() -> argparse.ArgumentParser:
    return _build_parser("python -m flow_model", __doc__, COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), COMMANDS, argv)

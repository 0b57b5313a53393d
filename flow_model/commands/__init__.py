"""One module per `python -m flow_model` subcommand, each with `add_parser(subparsers)` and `run(args) -> int`
(train's lives in flow_model.training.command); and the argument helpers they share."""
from __future__ import annotations

import argparse

from ..config import CHOICES, FIELD_TYPES, MODEL_FIELDS


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_model_options(group, exclude: tuple[str, ...] = ()) -> None:
    """One option per GlowConfig field the command lines set (--image-size ... --dequant-hidden), typed by the field."""
    for name in MODEL_FIELDS:
        if name in exclude:
            continue
        flag = "--" + name.replace("_", "-")
        if name in CHOICES:
            group.add_argument(flag, choices=CHOICES[name])
        else:
            group.add_argument(flag, type={"int": positive_int, "float": float}[FIELD_TYPES[name]])


def build_parser(prog: str, description: str, commands: dict) -> argparse.ArgumentParser:
    """A parser with one subcommand per module of `commands` (name -> module with add_parser and run)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for module in commands.values():
        module.add_parser(sub)
    return parser


def run_command(parser: argparse.ArgumentParser, commands: dict, argv: list[str] | None = None) -> int:
    """Parse, run the chosen command; a ValueError, OSError or RuntimeError becomes one `error: ...` line and exit
    code 2 (argparse's own usage errors exit 2 as well)."""
    import logging
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    command = args.command
    del args.command
    try:
        return commands[command].run(args)
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

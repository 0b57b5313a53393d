"""One module per `python -m experiments` subcommand, each with `add_parser(subparsers)` and `run(args) -> int`, the
shape of flow_model.commands."""
from __future__ import annotations

from pathlib import Path


def add_slider_study_inputs(p) -> None:
    """The inputs every study of the shipped sliders reads: the model with its directions, the attribute classifier
    (the instrument) and the labelled faces."""
    p.add_argument("--model", type=Path, default=Path("assets/celeba64"), help="model directory with directions")
    p.add_argument("--classifier", type=Path, default=Path("assets/attribute_classifier"))
    p.add_argument("--data", type=Path, default=Path("../shared/data/celeba"))

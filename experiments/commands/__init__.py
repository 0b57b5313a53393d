"""One module per `python -m experiments` subcommand, each with `add_parser(subparsers)` and `run(args) -> int`, the
shape of flow_model.commands."""

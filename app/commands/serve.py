"""`python -m app serve` (= `python app.py`): launch the face editor, offline, on the shipped model by default."""
from __future__ import annotations

import argparse

from .. import default_threads


def thread_count(text: str) -> int | None:
    """--threads: 'auto' (None: measured at start-up) or a whole number >= 1."""
    if text == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or a whole number >= 1, got {value}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="launch the editor (what `python app.py` runs)",
                       description="Interactive face editor on a Glow normalizing flow.")
    add_arguments(p)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="assets/celeba64",
                        help="pretrained model directory (config.json + model.safetensors, with directions."
                             "safetensors for the attribute sliders) or a training run directory")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 for the local network")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    parser.add_argument("--threads", type=thread_count, default=None, metavar="{auto,N}",
                        help="torch CPU threads per request; auto (default): whichever of 1..%d decodes a face "
                             "fastest on this machine, timed at start-up. Requests run cores // threads at a time, "
                             "so 1 lets two users render side by side" % default_threads())


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be in 1..65535, got {args.port}")
    from ..server import ServerOptions, serve

    serve(ServerOptions(model=args.model, device=args.device, host=args.host, port=args.port, share=args.share,
                        threads=args.threads))
    return 0

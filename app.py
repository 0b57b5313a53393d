"""Launch the face editor: python app.py [--model DIR] [--device cpu] [--host 127.0.0.1] [--port 7860] [--share]"""
from __future__ import annotations

import argparse
import logging
import os
import sys

# Offline before gradio is imported: no analytics, no version check, no Hugging Face Hub calls.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"

from app import default_threads  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Interactive face editor on a Glow normalizing flow.")
    parser.add_argument("--model", default="assets/celeba64",
                        help="pretrained model directory (config.json + model.safetensors, with directions."
                             "safetensors for the attribute sliders) or a training run directory")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or auto")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 for the local network")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public Gradio share link (off by default)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="torch CPU threads per request (default: 2, or 1 on a 1-core machine); requests run "
                             "cores // threads at a time, so 1 lets two users render side by side")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be in 1..65535, got {args.port}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from app.server import ServerOptions, serve

    try:
        serve(ServerOptions(model=args.model, device=args.device, host=args.host, port=args.port, share=args.share,
                            threads=args.threads))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

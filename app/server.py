"""Load a model into an EditorService, draw the example faces and serve the UI, offline."""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flow_model.device import resolve_device
from flow_model.imaging import to_pil


from . import default_threads
from .service import EditorService
from .ui import EditorUI

log = logging.getLogger(__name__)

EXAMPLE_TEMPERATURE = 0.6  # typical-looking faces; T = 1 samples are noisier
EXAMPLE_SEED = 0


@dataclass
class ServerOptions:
    model: str = "assets/celeba64"
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 7860
    share: bool = False
    threads: int = field(default_factory=default_threads)
    examples: int = 6


def example_faces(service: EditorService, n: int, folder: Path) -> list[str]:
    """Model samples as model-size PNGs: one-click faces with no licence question (no dataset images shipped),
    and always from the model being served."""
    if n == 0:
        return []
    paths = []
    for i, x in enumerate(service.sample(n, EXAMPLE_TEMPERATURE, EXAMPLE_SEED)):
        path = folder / f"example_{i}.png"
        to_pil(x).save(path)
        paths.append(str(path))
    return paths


def serve(options: ServerOptions) -> None:
    # A slider update is one batch-1 decode, a little faster with 2 threads than with 1 on an idle CPU (bench/editor.py
    # times both; the README has the figures). Only cores // threads requests run at once (one, by default) and the
    # rest wait in the queue: two multi-thread decodes side by side make their OpenMP threads wait on each other (many
    # times slower on a loaded machine), and --threads 1 lets two requests run side by side instead.
    torch.set_num_threads(options.threads)
    device = resolve_device(options.device)
    service = EditorService.load(options.model, device=str(device))
    log.info("model %s on %s: %d parameters, %d directions", options.model, device,
             service.model.num_parameters(), len(service.attributes))
    with tempfile.TemporaryDirectory(prefix="face-editor-") as folder:
        examples = example_faces(service, options.examples, Path(folder))
        demo = EditorUI(service, examples).build()
        demo.queue(default_concurrency_limit=max(1, (os.cpu_count() or 1) // options.threads))
        demo.launch(server_name=options.host, server_port=options.port, share=options.share,
                    footer_links=["api", "settings"], allowed_paths=[folder])

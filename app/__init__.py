"""The face editor: the latent logic (service.py, no Gradio), alignment, attribute directions, the Gradio UI and
server, and `python -m app {serve,directions}`.

Offline before Gradio can be imported by anything in this package: no analytics, no version check, no Hugging Face
Hub calls.
"""
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"


def default_threads() -> int:
    """Torch threads per request: 2 halve a batch-1 decode's latency on an idle machine; more barely help."""
    return min(2, os.cpu_count() or 1)

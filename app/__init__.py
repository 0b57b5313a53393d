"""The face editor: the latent logic (service.py, no Gradio), alignment, attribute directions, the Gradio UI and
server, and `python -m app {serve,directions,...}`.

Offline before Gradio can be imported by anything in this package: no analytics, no version check, no Hugging Face
Hub calls. And, before torch loads, OpenMP threads that sleep while they wait (see flow_model/__init__.py and the
README's "Limits and concurrency"): every entry point (`python app.py`, `python -m app ...`, scripts that import
`app` first) stays fast beside other CPU jobs.
"""
import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_threads() -> int:
    """The most torch threads a request gets: more than 2 barely help a batch-1 decode. Whether 2 beat 1 depends on
    the machine, so the server times both (app/threads.py)."""
    return min(2, os.cpu_count() or 1)

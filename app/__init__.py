"""The face editor's Gradio UI; all latent logic is in flow_model.editing.EditorService."""
import os


def default_threads() -> int:
    """Torch threads per request: 2 halve a batch-1 decode's latency on an idle machine; more barely help."""
    return min(2, os.cpu_count() or 1)

"""flow_model: Glow with Flow++ pieces, for exact-likelihood face modelling and latent editing.

Before torch loads, OpenMP threads are told to sleep while they wait (OMP_WAIT_POLICY=PASSIVE, unless the
environment already sets it): with the default, waiting threads spin, and beside another busy process on the same
cores a batch-1 encode or decode ran 10x slower (bench/contention.py; README, "Limits and concurrency"). It only takes
effect when flow_model (or app) is imported before torch, as every entry point of this project does.
"""
import os as _os
import sys as _sys

if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .config import GlowConfig
from .glow import Glow, reduce_bits

__all__ = ["Glow", "GlowConfig", "reduce_bits"]
__version__ = "0.1.0"

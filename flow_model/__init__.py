"""flow_model: Glow with Flow++ pieces, for exact-likelihood face modelling and latent editing."""
from .config import GlowConfig
from .glow import Glow, reduce_bits

__all__ = ["Glow", "GlowConfig", "reduce_bits"]
__version__ = "0.1.0"

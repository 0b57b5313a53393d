"""Invertible layers; each implements `forward(x) -> (y, logdet)` and `inverse(y) -> x`."""
from .actnorm import ActNorm
from .base import FlowLayer, FlowSequential
from .coupling import AdditiveCoupling, AffineCoupling
from .dequantization import UniformDequantizer
from .multiscale import Split, Squeeze, TopPrior, gaussian_log_prob
from .nets import ConvNet, ZeroConv2d, make_cond_net
from .permutation import InvConv1x1, InvConv1x1LU, Permutation, make_permutation

__all__ = [
    "ActNorm", "AdditiveCoupling", "AffineCoupling", "ConvNet", "FlowLayer", "FlowSequential", "InvConv1x1",
    "InvConv1x1LU", "Permutation", "Split", "Squeeze", "TopPrior", "UniformDequantizer", "ZeroConv2d",
    "gaussian_log_prob", "make_cond_net", "make_permutation",
]

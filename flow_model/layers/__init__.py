"""Invertible layers; each implements `forward(x) -> (y, logdet)` and `inverse(y) -> x`."""
from .actnorm import ActNorm
from .base import EvalCache, FlowLayer, FlowSequential, tensors_of
from .conv import conv1x1
from .coupling import AdditiveCoupling, AffineCoupling, make_coupling
from .dequantization import UniformDequantizer
from .multiscale import Split, Squeeze, TopPrior, gaussian_log_prob
from .nets import ConvNet, ZeroConv2d, make_cond_net
from .permutation import InvConv1x1, InvConv1x1LU, InvertibleConv, Permutation, make_permutation

__all__ = [
    "ActNorm", "AdditiveCoupling", "AffineCoupling", "ConvNet", "EvalCache", "FlowLayer", "FlowSequential",
    "InvConv1x1", "InvConv1x1LU", "InvertibleConv", "Permutation", "Split", "Squeeze", "TopPrior",
    "UniformDequantizer", "ZeroConv2d", "conv1x1", "gaussian_log_prob", "make_cond_net", "make_coupling", "make_permutation",
    "tensors_of",
]

"""Flow++'s conditioning net (section 3.3): gated convolutions plus multi-head self-attention over positions.

Self-attention lets every output position see the whole conditioning half, which a stack of 3x3 convolutions only
does after many layers; the paper credits it with part of the gain over Glow's ConvNet.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .nets import ZeroConv2d


class ChannelNorm(nn.Module):
    """LayerNorm over the channels at each position of an NCHW map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GatedConv(nn.Module):
    """x + GLU(conv3x3(x)), then LayerNorm."""

    def __init__(self, channels: int, dropout: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.norm = ChannelNorm(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(F.glu(self.conv(x), dim=1)))


class GatedAttention(nn.Module):
    """x + GLU(conv1x1(MultiHead(conv1x1(x) -> q, k, v))), then LayerNorm; attention runs over all H*W positions."""

    def __init__(self, channels: int, heads: int, dropout: float) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.gate = nn.Conv2d(channels, 2 * channels, 1)
        self.dropout = nn.Dropout(dropout)
        self.norm = ChannelNorm(channels)

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """softmax(QKᵀ/√d)V per head, heads concatenated back on the channels."""
        b, c, h, w = x.shape
        qkv = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2)
        q, k, v = qkv.unbind(1)  # each (B, heads, H*W, d)
        out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(-1, -2).reshape(b, c, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(F.glu(self.gate(self.attend(x)), dim=1)))


class AttentionNet(nn.Module):
    """conv3x3 -> cond_blocks x [gated conv, gated attention] -> zero-initialised conv3x3 (a new coupling = identity)."""

    def __init__(self, in_channels: int, out_channels: int, config) -> None:
        super().__init__()
        hidden = config.hidden
        self.input = nn.Conv2d(in_channels, hidden, 3, padding=1)
        blocks = []
        for _ in range(config.cond_blocks):
            blocks += [GatedConv(hidden, config.dropout), GatedAttention(hidden, config.attention_heads, config.dropout)]
        self.blocks = nn.Sequential(*blocks)
        self.out = ZeroConv2d(hidden, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.input(x)))

"""Shuffle Attention.

Zhang and Yang, "SA-Net: Shuffle Attention for Deep Convolutional Neural Networks",
ICASSP 2021, https://arxiv.org/abs/2102.00240 (official code: wofmanaf/SA-Net)

Channels are split into ``groups``; each group is halved into a channel branch (pooled,
affine, sigmoid) and a spatial branch (GroupNorm, affine, sigmoid), then the halves are
interleaved by a channel shuffle. 6 * C / (2 * groups) parameters per block.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Attention


class ShuffleAttention(Attention):
    """Channel and spatial (GroupNorm) branches per group, then a channel shuffle."""

    checkpoint_marker = "cweight"
    checkpoint_names = ("sa",)

    def __init__(self, channels: int, groups: int = 64) -> None:
        super().__init__()
        if groups < 1 or channels % (2 * groups):
            raise ValueError(
                f"Shuffle attention needs channels divisible by 2 * groups: got "
                f"channels={channels}, groups={groups}"
            )
        self.groups = groups
        half = channels // (2 * groups)
        self.cweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.cbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.sweight = nn.Parameter(torch.zeros(1, half, 1, 1))
        self.sbias = nn.Parameter(torch.ones(1, half, 1, 1))
        self.gn = nn.GroupNorm(half, half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        grouped = x.reshape(n * self.groups, c // self.groups, h, w)
        x_channel, x_spatial = grouped.chunk(2, dim=1)
        channel_gate = torch.sigmoid(
            self.cweight * x_channel.mean((2, 3), keepdim=True) + self.cbias
        )
        spatial_gate = torch.sigmoid(self.sweight * self.gn(x_spatial) + self.sbias)
        out = torch.cat([x_channel * channel_gate, x_spatial * spatial_gate], dim=1)
        # Channel shuffle with 2 groups: interleave the two halves across the groups.
        return out.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

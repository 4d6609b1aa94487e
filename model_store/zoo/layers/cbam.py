"""Convolutional Block Attention Module.

Woo et al., "CBAM: Convolutional Block Attention Module", ECCV 2018,
https://arxiv.org/abs/1807.06521 (official code: Jongchan/attention-module)

Channel gate (a shared MLP over average- and max-pooled descriptors) followed by a spatial
gate (a 7x7 conv + BN over the channel-wise [max, mean] maps), as in the official code.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from .base import Attention


class ChannelGate(nn.Module):
    """``sigmoid(mlp(avg_hw(x)) + mlp(max_hw(x)))``, MLP with bias and reduction ``r``."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        if reduction < 1 or channels % reduction:
            raise ValueError(
                f"CBAM reduction must divide channels: got channels={channels}, "
                f"reduction={reduction}"
            )
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        # One MLP pass over both descriptors stacked on the batch axis.
        pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3))], dim=0)
        logits = self.fc2(self.act(self.fc1(pooled)))
        scale = torch.sigmoid(logits[:n] + logits[n:])
        return x * scale.view(n, c, 1, 1)


class SpatialGate(nn.Module):
    """``sigmoid(bn(conv_kxk([max_c(x), mean_c(x)])))``."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"CBAM spatial kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)
        self.bn = nn.BatchNorm2d(1, eps=1e-5, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(1, keepdim=True), x.mean(1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.bn(self.conv(pooled)))


class CBAM(Attention):
    """Channel gate, then spatial gate (neither is a function of the mean alone)."""

    checkpoint_marker = "channel."
    checkpoint_names = ("cbam",)
    checkpoint_renames = (  # the official code's names
        (r"^ChannelGate\.mlp\.1\.", "channel.fc1."),
        (r"^ChannelGate\.mlp\.3\.", "channel.fc2."),
        (r"^SpatialGate\.spatial\.", "spatial."),
    )

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 7) -> None:
        super().__init__()
        self.channel = ChannelGate(channels, reduction)
        self.spatial = SpatialGate(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))

    def conv_bn_pairs(self) -> Iterator[tuple[str, str]]:
        yield "spatial.conv", "spatial.bn"

"""Squeeze-and-Excitation channel attention.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018 / TPAMI 2019,
https://arxiv.org/abs/1709.01507

The excitation is two fully connected layers with bias (reduction ``r``), as in the paper and
timm's ``seresnet50``; that is what makes SE-ResNet-50 28,088,024 parameters. ``bias=False``
exists only to load the bias-free ``nn.Sequential`` re-implementations found in the wild.
"""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    """``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``.

    The gate depends on ``x`` only through its spatial mean (``gate_from_mean``), so a
    bottleneck may compute that mean earlier and cheaper (see ``Bottleneck.squeeze_inner``).
    """

    gate_from_mean = True

    def __init__(self, channels: int, reduction: int = 16, bias: bool = True) -> None:
        super().__init__()
        if reduction < 1 or channels % reduction:
            raise ValueError(
                f"SE reduction must divide channels: got channels={channels}, reduction={reduction}"
            )
        hidden = channels // reduction
        self.fc1 = nn.Linear(channels, hidden, bias=bias)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=bias)

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """Per-channel scale in (0, 1) from the pooled ``(N, C)`` descriptor."""
        return torch.sigmoid(self.fc2(self.act(self.fc1(pooled))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(x.mean((2, 3)))
        return x * scale[:, :, None, None]

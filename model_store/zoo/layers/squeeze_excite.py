"""Squeeze-and-Excitation channel attention.

Hu et al., "Squeeze-and-Excitation Networks", CVPR 2018 / TPAMI 2019,
https://arxiv.org/abs/1709.01507

The excitation is two fully connected layers with bias (reduction ``r``), as in the paper and
timm's ``seresnet50``; that is what makes SE-ResNet-50 28,088,024 parameters. ``bias=False``
exists only to load the bias-free ``nn.Sequential`` re-implementations found in the wild.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .base import MeanGateAttention


class SqueezeExcite(MeanGateAttention):
    """``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))``."""

    checkpoint_marker = "fc1."
    checkpoint_names = ("se", "se_module")  # timm, and SELayer re-implementations
    checkpoint_renames = ((r"^fc\.0\.", "fc1."), (r"^fc\.2\.", "fc2."))  # nn.Sequential MLPs

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

    @classmethod
    def kwargs_from_weights(cls, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        return {"bias": "fc1.bias" in weights or "fc2.bias" in weights}

"""Efficient Channel Attention.

Wang et al., "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural Networks",
CVPR 2020, https://arxiv.org/abs/1910.03151 (official code: BangguWu/ECANet)

A 1-D convolution of size ``k`` over the pooled channel vector replaces SE's MLP: local
cross-channel interaction with ``k`` parameters and no dimensionality reduction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .base import MeanGateAttention


def adaptive_kernel_size(channels: int, gamma: int = 2, beta: int = 1) -> int:
    """The paper's psi(C): nearest odd number to ``|log2(C) + beta| / gamma``.

    Gives 5, 5, 5, 7 for ResNet-50's 256, 512, 1024, 2048 channels.
    """
    t = int(abs((math.log2(channels) + beta) / gamma))
    return t if t % 2 else t + 1


class EfficientChannelAttention(MeanGateAttention):
    """``x * sigmoid(conv1d_k(mean_hw(x)))`` with a bias-free, zero-padded 1-D conv."""

    checkpoint_marker = "conv."
    checkpoint_names = ("eca", "se")  # the official ECANet code; timm keeps ECA under ``se``

    def __init__(
        self, channels: int, kernel_size: int | None = None, gamma: int = 2, beta: int = 1
    ) -> None:
        super().__init__()
        if kernel_size is None:
            kernel_size = adaptive_kernel_size(channels, gamma, beta)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ECA kernel_size must be a positive odd number, got {kernel_size}")
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """Per-channel scale in (0, 1) from the pooled ``(N, C)`` descriptor.

        The 1-D conv is written as ``k`` shifted multiply-adds over the zero-padded vector (the
        same cross-correlation as ``self.conv``), so the compiler fuses it with the sigmoid into
        one small kernel instead of calling a convolution library on a 1-channel signal.
        """
        channels, pad = pooled.shape[1], (self.kernel_size - 1) // 2
        padded = F.pad(pooled, (pad, pad))
        taps = self.conv.weight.view(-1)
        logits = taps[0] * padded[:, :channels]
        for tap in range(1, self.kernel_size):
            logits = logits + taps[tap] * padded[:, tap : tap + channels]
        return torch.sigmoid(logits)

    @classmethod
    def kwargs_from_weights(cls, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """The released ECA weights use k = 3, 5, 5, 7 by stage, not the adaptive size."""
        return {"kernel_size": weights["conv.weight"].shape[-1]}

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"

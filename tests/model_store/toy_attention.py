"""A made-up attention kind, written as a new kind is: one ``MeanGateAttention`` subclass (it
says only how it gates the pooled channels), registered
by one line (here at run time, by the test that uses it)."""

from __future__ import annotations

import torch
from torch import nn

from model_store.zoo.layers import MeanGateAttention


class ToyGate(MeanGateAttention):
    """``x * sigmoid(scale * mean_hw(x) + shift)``: a per-channel affine gate on the mean."""

    checkpoint_marker = "scale"
    checkpoint_names = ("toy_gate",)  # where a "published" checkpoint keeps it
    checkpoint_renames = ((r"^a$", "scale"), (r"^b$", "shift"))  # and under which names

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.scale * pooled + self.shift)

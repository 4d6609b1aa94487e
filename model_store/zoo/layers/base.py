"""What every attention kind declares about itself, so the rest of the zoo derives from it.

A new kind subclasses ``Attention``, fills in the class attributes that apply, and gets one line
in ``model_store.zoo.registry.ATTENTION_LAYERS``: checkpoint import, BN folding, the early
squeeze and every registry-parametrized test then cover it with no other edit.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch
from torch import nn


class Attention(nn.Module):
    """A module ``x -> x * gate(x)`` placed after a bottleneck's third BN."""

    checkpoint_marker: ClassVar[str]
    """A parameter name (inside the module) that only this kind has: how the kind of a
    checkpoint is recognised."""
    checkpoint_names: ClassVar[tuple[str, ...]] = ()
    """Module names published checkpoints store this kind under (``layer1.0.<name>.*``)."""
    checkpoint_renames: ClassVar[tuple[tuple[str, str], ...]] = ()
    """``(regex, replacement)`` on parameter names inside the module: published -> ours."""
    gate_from_mean: ClassVar[bool] = False
    """``forward(x) == x * gate(mean_hw(x))`` exactly: a bottleneck may then take that mean
    from its 4x narrower inner activation (``Bottleneck._inner_gate``)."""

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        """Per-channel scale from the pooled ``(N, C)`` descriptor (``gate_from_mean`` kinds)."""
        raise NotImplementedError(f"{type(self).__name__} does not gate from the mean")

    def conv_bn_pairs(self) -> Iterator[tuple[str, str]]:
        """(conv, following BN) pairs inside the module that inference may fold together."""
        return iter(())

    @classmethod
    def kwargs_from_weights(cls, weights: Mapping[str, torch.Tensor]) -> dict[str, Any]:
        """Constructor arguments one block's weights imply (names inside the module), so a
        checkpoint loads without the user repeating how it was built."""
        return {}


class MeanGateAttention(Attention):
    """``x * gate(mean_hw(x))``: a kind that only says how it gates the pooled channel vector
    (SE's MLP, ECA's 1-D conv) and gets the early squeeze with it."""

    gate_from_mean = True

    def gate(self, pooled: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean((2, 3)))[:, :, None, None]

"""Attention factory: the attention kind is a name, chosen when a block is built."""

from __future__ import annotations

from typing import Any

from torch import nn

from .cbam import CBAM
from .eca import EfficientChannelAttention
from .shuffle_attention import ShuffleAttention
from .squeeze_excite import SqueezeExcite

ATTENTION_LAYERS: dict[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "eca": EfficientChannelAttention,
    "cbam": CBAM,
    "sa": ShuffleAttention,
}


def create_attn(name: str | None, channels: int, **kwargs: Any) -> nn.Module | None:
    """Build attention ``name`` over ``channels``; ``None`` or ``"none"`` means no attention."""
    if name is None or name == "none":
        return None
    try:
        layer = ATTENTION_LAYERS[name]
    except KeyError:
        known = ", ".join(["none", *ATTENTION_LAYERS])
        raise ValueError(f"unknown attention {name!r}; choose one of: {known}") from None
    return layer(channels, **kwargs)

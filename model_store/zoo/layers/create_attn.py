"""Attention factory: the attention kind is a name, chosen when a block is built."""

from __future__ import annotations

from typing import Any

from ..registry import ATTENTION_LAYERS, NO_ATTENTION, plugin_class
from .base import Attention


def attention_layer(name: str) -> type[Attention]:
    """The layer class registered as ``name`` (``model_store.zoo.registry.ATTENTION_LAYERS``)."""
    try:
        return plugin_class(ATTENTION_LAYERS[name], Attention)
    except KeyError:
        known = ", ".join([NO_ATTENTION, *ATTENTION_LAYERS])
        raise ValueError(f"unknown attention {name!r}; choose one of: {known}") from None


def attention_layers() -> dict[str, type[Attention]]:
    """Every registered kind, by name."""
    return {name: attention_layer(name) for name in ATTENTION_LAYERS}


def create_attn(name: str | None, channels: int, **kwargs: Any) -> Attention | None:
    """Build attention ``name`` over ``channels``; ``None`` or ``"none"`` means no attention."""
    if name is None or name == NO_ATTENTION:
        if kwargs:
            raise ValueError(f"attention settings {sorted(kwargs)} given, but no attention")
        return None
    layer = attention_layer(name)
    try:
        return layer(channels, **kwargs)
    except TypeError as exc:  # an argument this kind does not take
        raise ValueError(f"{name} attention: {exc}") from None

"""Model registry: a model name is a set of ResNet arguments, never a copied network."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    detect_attention,
    infer_architecture,
    load_state_dict_strict,
    read_checkpoint,
)
from .registry import get_spec
from .resnet import RESNET50_LAYERS, ResNet

TINY_ARCH: dict[str, Any] = {"layers": (1, 1, 1, 1), "base_width": 32}
"""Same code path, about 1/40 of the compute: what tests train in seconds on a CPU."""


def create_model(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | Path | Checkpoint | None = None,
    *,
    layers: Sequence[int] | None = None,
    base_width: int | None = None,
    kernel_sizes: Sequence[int] | None = None,
    **attn_kwargs: Any,
) -> ResNet:
    """Build ``name``; with ``checkpoint``, shapes (classes, depth, ECA kernel sizes) come from it.

    Explicit arguments win over what the checkpoint implies; a checkpoint that then does not fit
    is refused with the missing, unexpected and mis-shaped keys named. ``kernel_sizes`` (ECA
    only) is one kernel size per stage, e.g. the official ``(3, 5, 5, 7)``; without it ECA uses
    the adaptive size from the channel count.
    """
    spec = get_spec(name)
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        loaded = checkpoint
    else:
        loaded = read_checkpoint(checkpoint)
    inferred: dict[str, Any] = {}
    if loaded is not None:
        found = detect_attention(loaded.state_dict)
        if found != spec.attention:
            raise CheckpointError(
                f"checkpoint {loaded.path} holds {found!r} attention but model {name!r} expects "
                f"{spec.attention!r}; pick the model that matches the checkpoint"
            )
        inferred = infer_architecture(loaded.state_dict)
    kernel_sizes = _first(kernel_sizes, inferred.get("kernel_sizes"))
    if "bias" in inferred and "bias" not in attn_kwargs and spec.attention == "se":
        attn_kwargs["bias"] = inferred["bias"]
    if kernel_sizes is not None and spec.attention != "eca":
        raise ValueError(f"kernel_sizes applies to ECA models only, not {name!r}")
    arch: dict[str, Any] = {
        "layers": tuple(_first(layers, inferred.get("layers"), RESNET50_LAYERS)),
        "num_classes": _first(num_classes, inferred.get("num_classes"), 1000),
        "base_width": _first(base_width, inferred.get("base_width"), 64),
        "attn_layer": spec.attention,
        "attn_kwargs": attn_kwargs,
        "stage_attn_kwargs": [{"kernel_size": k} for k in kernel_sizes] if kernel_sizes else None,
    }
    model = ResNet(**arch)
    model.arch = {"name": name, **arch}
    if loaded is not None:
        load_state_dict_strict(model, loaded.state_dict, loaded.path)
    return model


def _first(*values: Any) -> Any:
    """The first value that is not None (0 and () are real choices, not "unset")."""
    return next((v for v in values if v is not None), None)


def count_parameters(model: ResNet) -> tuple[int, int]:
    """(all parameters, attention parameters)."""
    total = sum(p.numel() for p in model.parameters())
    attention = sum(
        p.numel()
        for block in model.blocks()
        if block.attn is not None
        for p in block.attn.parameters()
    )
    return total, attention

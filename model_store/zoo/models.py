"""Model registry: a model name is a set of ResNet arguments, never a copied network."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import (
    Checkpoint,
    CheckpointError,
    infer_architecture,
    load_state_dict_strict,
    read_checkpoint,
)
from .layers import attention_layer
from .registry import NO_ATTENTION, get_spec
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
    stage_attn_kwargs: Sequence[Mapping[str, Any]] | None = None,
    **attn_kwargs: Any,
) -> ResNet:
    """Build ``name``; with ``checkpoint``, shapes (classes, depth, the attention's per-stage
    settings such as ECA's kernel sizes) come from it.

    Explicit arguments win over what the checkpoint implies; a checkpoint that then does not fit
    is refused with the missing, unexpected and mis-shaped keys named. ``stage_attn_kwargs`` is
    one dict per stage over ``attn_kwargs``, e.g. the official ECA kernel sizes
    ``[{"kernel_size": k} for k in (3, 5, 5, 7)]``.
    """
    spec = get_spec(name)
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        loaded = checkpoint
    else:
        loaded = read_checkpoint(checkpoint)
    inferred: dict[str, Any] = {}
    if loaded is not None:
        inferred = infer_architecture(loaded.state_dict)
        if inferred["attn_layer"] != spec.attention:
            raise CheckpointError(
                f"checkpoint {loaded.path} holds {inferred['attn_layer']!r} attention but model "
                f"{name!r} expects {spec.attention!r}; pick the model that matches the checkpoint"
            )
    implied = [
        {k: v for k, v in stage.items() if k not in attn_kwargs}
        for stage in inferred.get("stage_attn_kwargs", ())
    ]
    arch: dict[str, Any] = {
        "layers": tuple(_first(layers, inferred.get("layers"), RESNET50_LAYERS)),
        "num_classes": _first(num_classes, inferred.get("num_classes"), 1000),
        "base_width": _first(base_width, inferred.get("base_width"), 64),
        "attn_layer": spec.attention,
        "attn_kwargs": attn_kwargs,
        "stage_attn_kwargs": _first(stage_attn_kwargs, implied or None),
    }
    model = ResNet(**arch)
    model.arch = {"name": name, **arch}
    if loaded is not None:
        load_state_dict_strict(model, loaded.state_dict, loaded.path)
    return model


def gates_from_mean(name: str) -> bool:
    """Whether model ``name``'s attention gates from the spatial mean: the early squeeze then
    applies to it (``optimize.enable_inner_squeeze``)."""
    attention = get_spec(name).attention
    return attention != NO_ATTENTION and attention_layer(attention).gate_from_mean


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

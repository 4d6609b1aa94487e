"""Model registry: a model name is a backbone and an attention kind, never a copied network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from .checkpoint import Checkpoint, CheckpointError, load_state_dict_strict, read_checkpoint
from .layers import attention_layer
from .registry import NO_ATTENTION, backbone_network, get_spec


def create_model(
    name: str,
    num_classes: int | None = None,
    checkpoint: str | Path | Checkpoint | None = None,
    **arch: Any,
) -> nn.Module:
    """Build ``name``; with ``checkpoint``, shapes (classes, depth or width, the attention's
    settings such as ECA's kernel sizes) come from it.

    ``arch`` are the backbone's own arguments (``ResNet.create``: ``layers``, ``base_width``,
    ``stage_attn_kwargs``; ``MobileNetV2.create``: ``width_mult``, ``block_attn_kwargs``) and the
    attention's, for every block. Explicit arguments win over what the checkpoint implies; a
    checkpoint that then does not fit is refused with the missing, unexpected and mis-shaped
    keys named.
    """
    spec = get_spec(name)
    network = backbone_network(spec.backbone)
    if checkpoint is None or isinstance(checkpoint, Checkpoint):
        loaded = checkpoint
    else:
        loaded = read_checkpoint(checkpoint)
    implied: dict[str, Any] = {}
    state_dict = None
    if loaded is not None:
        state_dict = network.import_keys(loaded.state_dict)
        implied = network.arch_from_weights(state_dict)
        if implied["attn_layer"] != spec.attention:
            raise CheckpointError(
                f"checkpoint {loaded.path} holds {implied['attn_layer']!r} attention but model "
                f"{name!r} expects {spec.attention!r}; pick the model that matches the checkpoint"
            )
    model = network.create(implied, num_classes, spec.attention, **arch)
    model.arch = {"name": name, **model.arch}
    if loaded is not None and state_dict is not None:
        load_state_dict_strict(model, state_dict, loaded.path)
    return model


def tiny_arch(name: str) -> dict[str, Any]:
    """``name``'s backbone shrunk for what tests and demos train in seconds on a CPU."""
    return dict(backbone_network(get_spec(name).backbone).tiny_arch)


def tiny_steps(name: str) -> int:
    """The training steps ``name``'s tiny configuration needs (``demo.tiny``)."""
    return int(backbone_network(get_spec(name).backbone).tiny_steps)


def gates_from_mean(name: str) -> bool:
    """Whether model ``name``'s attention gates from the spatial mean and its backbone takes
    that mean early (``optimize.enable_inner_squeeze``: ResNet's bottleneck)."""
    spec = get_spec(name)
    return (
        spec.attention != NO_ATTENTION
        and attention_layer(spec.attention).gate_from_mean
        and getattr(backbone_network(spec.backbone), "inner_squeeze", False)
    )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(all parameters, attention parameters)."""
    total = sum(p.numel() for p in model.parameters())
    attention = sum(
        p.numel()
        for block in model.blocks()
        if block.attn is not None
        for p in block.attn.parameters()
    )
    return total, attention

"""Checkpoint import: read the layouts checkpoints are published in, refuse partial ones.

Handled as saved, with no conversion step by the user:
- a plain ``state_dict``, or one under a ``state_dict`` / ``model`` key, with or without the
  ``module.`` prefix that ``DataParallel`` adds;
- torchvision / timm ResNet names for the backbone;
- attention under the names and in the layouts each kind declares (``checkpoint_names``,
  ``checkpoint_renames`` of its class in ``layers/``: timm's ``se``, the official ECANet, CBAM
  and SA-Net codes, ``nn.Sequential`` SE re-implementations), MLP weights as 1x1 convs or as
  linears;
- this project's own files (``save_checkpoint``), which also carry labels and input size.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .layers import attention_layer, attention_layers
from .registry import NO_ATTENTION

FORMAT = "attention-serving/1"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.")
_ATTENTION = re.compile(r"^layer(\d)\.(\d+)\.attn\.(.+)$")


class CheckpointError(ValueError):
    """The checkpoint cannot be read, or does not match the model it is loaded into."""


DEFAULT_INPUT_SIZE = 224


@dataclass
class Checkpoint:
    state_dict: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str = ""

    @property
    def input_size(self) -> int:
        """The square crop the model was trained on (ImageNet's 224 unless the meta says)."""
        return int(self.meta.get("input_size", DEFAULT_INPUT_SIZE))


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Load ``path`` (tensors only, no pickled code) and bring its keys to this project's names."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    meta: dict[str, Any] = {}
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        meta = {k: v for k, v in obj.items() if k != "state_dict"}
    state_dict = _unwrap(obj, path)
    return Checkpoint(convert_keys(state_dict), meta, str(path))


def _unwrap(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, Mapping) and not all(torch.is_tensor(v) for v in obj.values()):
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise CheckpointError(
                f"{path}: no state_dict found; top-level keys are {sorted(map(str, obj))[:10]}, "
                f"expected tensors or one of {list(_WRAPPER_KEYS)}"
            )
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path}: expected a state_dict (name -> tensor), got {type(obj).__name__}"
        )
    prefix = "module."
    if all(k.startswith(prefix) for k in obj):
        obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return dict(obj)


def convert_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename each block's attention to ``attn.*`` in this project's names, as every registered
    kind declares (module names, then renames inside the module)."""
    layers = attention_layers().values()
    names = sorted({n for layer in layers for n in layer.checkpoint_names}, key=len, reverse=True)
    module = re.compile(rf"^(layer\d\.\d+)\.(?:{'|'.join(map(re.escape, names))})\.")
    renames = [(re.compile(p), r) for layer in layers for p, r in layer.checkpoint_renames]
    converted = {}
    for key, value in state_dict.items():
        if names:
            key = module.sub(r"\1.attn.", key)
        if match := _ATTENTION.match(key):
            stage, index, inner = match.groups()
            for pattern, replacement in renames:
                inner = pattern.sub(replacement, inner)
            key = f"layer{stage}.{index}.attn.{inner}"
        converted[key] = value
    return converted


def _attention_weights(
    state_dict: Mapping[str, torch.Tensor],
) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Per block (stage, index): its attention's tensors, by name inside the module."""
    blocks: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if match := _ATTENTION.match(key):
            blocks.setdefault((int(match[1]), int(match[2])), {})[match[3]] = value
    return blocks


def attention_kind(blocks: Iterable[Mapping[str, torch.Tensor]]) -> str:
    """The attention kind blocks' weights hold (each block's by name inside its attention
    module): the kind whose marker they have, whatever the backbone."""
    inner = {name for weights in blocks for name in weights}
    found = {
        kind
        for kind, layer in attention_layers().items()
        if any(name.startswith(layer.checkpoint_marker) for name in inner)
    }
    if len(found) > 1:
        raise CheckpointError(f"checkpoint mixes attention kinds: {sorted(found)}")
    return found.pop() if found else NO_ATTENTION


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ResNet constructor arguments implied by a converted state_dict: the attention kind, the
    tensor shapes, and the per-stage settings the kind reads from its weights
    (``ResNet.arch_from_weights``)."""
    attention = _attention_weights(state_dict)
    arch: dict[str, Any] = {"attn_layer": attention_kind(attention.values())}
    if "fc.weight" in state_dict:
        arch["num_classes"] = state_dict["fc.weight"].shape[0]
    if "conv1.weight" in state_dict:
        arch["base_width"] = state_dict["conv1.weight"].shape[0]
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        if match := _BLOCK.match(key):
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
    if sorted(blocks) == [1, 2, 3, 4]:
        arch["layers"] = tuple(len(blocks[stage]) for stage in (1, 2, 3, 4))
    if arch["attn_layer"] != NO_ATTENTION and "layers" in arch:
        layer = attention_layer(arch["attn_layer"])
        stages: dict[int, list[dict[str, Any]]] = {}
        for (stage, _), weights in sorted(attention.items()):
            stages.setdefault(stage, []).append(layer.kwargs_from_weights(weights))
        if differ := {s: k for s, k in stages.items() if any(x != k[0] for x in k)}:
            raise CheckpointError(f"attention settings differ within a stage: {differ}")
        if any(kwargs[0] for kwargs in stages.values()):
            arch["stage_attn_kwargs"] = [stages[stage][0] for stage in sorted(stages)]
    return arch


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load or refuse: names every missing, unexpected and mis-shaped key. A 1x1 conv's
    ``(out, in, 1, 1)`` weight loads into a linear layer's ``(out, in)``, as published MLPs
    (timm's SE, CBAM) are saved either way."""
    expected = model.state_dict()
    state_dict = {
        k: v.flatten(1) if k in expected and v.dim() == 4 and expected[k].dim() == 2 else v
        for k, v in state_dict.items()
    }
    missing = [k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(v.shape)}, model {tuple(expected[k].shape)})"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = [
        f"{label} ({len(keys)}): {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        )
        if keys
    ]
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=False)


def save_checkpoint(model: nn.Module, path: str | Path, **meta: Any) -> Path:
    """Save weights with the architecture and ``meta`` (labels, input size...) beside them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arch = dict(getattr(model, "arch", {}))
    torch.save({"format": FORMAT, "arch": arch, **meta, "state_dict": model.state_dict()}, path)
    return path

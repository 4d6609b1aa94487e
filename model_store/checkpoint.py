"""Checkpoint import: read the layouts checkpoints are published in, refuse partial ones.

Handled as saved, with no conversion step by the user:
- a plain ``state_dict``, or one under a ``state_dict`` / ``model`` key, with or without the
  ``module.`` prefix that ``DataParallel`` adds;
- torchvision / timm ResNet names for the backbone;
- attention under ``se`` (timm, incl. its ECA ``se.conv``), ``eca`` (official ECANet),
  ``cbam`` (official CBAM: ``ChannelGate.mlp.1/3``, ``SpatialGate.spatial.conv/bn``),
  ``sa`` (official SA-Net) or ``se_module``; SE as ``fc1``/``fc2`` (1x1 convs or linears) or
  as ``fc.0``/``fc.2`` (``nn.Sequential`` of linears);
- this project's own files (``save_checkpoint``), which also carry labels and input size.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "attention-serving/1"
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_ATTN_ALIASES = "se|eca|cbam|sa|se_module"
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (rf"^(layer\d\.\d+)\.(?:{_ATTN_ALIASES})\.", r"\1.attn."),
        (r"\.attn\.fc\.0\.", ".attn.fc1."),
        (r"\.attn\.fc\.2\.", ".attn.fc2."),
        (r"\.attn\.ChannelGate\.mlp\.1\.", ".attn.channel.fc1."),
        (r"\.attn\.ChannelGate\.mlp\.3\.", ".attn.channel.fc2."),
        (r"\.attn\.SpatialGate\.spatial\.", ".attn.spatial."),
    )
)
_LINEAR_WEIGHT = re.compile(r"\.attn\.(?:channel\.)?fc[12]\.weight$")
_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.")


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
    """Rename foreign attention keys to ``attn.*`` and 1x1-conv MLP weights to linear ones."""
    converted = {}
    for key, value in state_dict.items():
        for pattern, replacement in _KEY_RULES:
            key = pattern.sub(replacement, key)
        if _LINEAR_WEIGHT.search(key) and value.dim() == 4:
            value = value.flatten(1)
        converted[key] = value
    return converted


def detect_attention(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The attention kind a converted state_dict holds, from its parameter names."""
    markers = {
        "attn.fc1.": "se",
        "attn.conv.": "eca",
        "attn.channel.": "cbam",
        "attn.cweight": "sa",
    }
    found = {kind for key in state_dict for marker, kind in markers.items() if marker in key}
    if len(found) > 1:
        raise CheckpointError(f"checkpoint mixes attention kinds: {sorted(found)}")
    return found.pop() if found else "none"


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """ResNet constructor arguments implied by the tensor shapes of a converted state_dict."""
    arch: dict[str, Any] = {}
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
    kernel_sizes: dict[int, set[int]] = {}
    for key, value in state_dict.items():
        if key.endswith(".attn.conv.weight") and (match := _BLOCK.match(key)):
            kernel_sizes.setdefault(int(match[1]), set()).add(value.shape[-1])
    if kernel_sizes:
        if any(len(sizes) > 1 for sizes in kernel_sizes.values()):
            raise CheckpointError(f"ECA kernel sizes differ within a stage: {kernel_sizes}")
        arch["kernel_sizes"] = tuple(kernel_sizes[s].pop() for s in sorted(kernel_sizes))
    if any(k.endswith(".attn.fc1.weight") for k in state_dict):
        arch["bias"] = any(k.endswith(".attn.fc1.bias") for k in state_dict)
    return arch


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str
) -> None:
    """Load or refuse: names every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
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

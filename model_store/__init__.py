"""Model zoo: ResNet-50 with pluggable SE / ECA / CBAM / SA attention, checkpoints, labels,
and the inference optimisation that TorchServe workers and benchmarks use.

The names below load on first use: ``import model_store.images`` or ``model_store.registry``
(all the gateway needs) must not import torch, which the gateway's image does not have.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MODELS": "registry",
    "get_spec": "registry",
    "TINY_ARCH": "models",
    "count_parameters": "models",
    "create_model": "models",
    "CheckpointError": "checkpoint",
    "read_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_labels": "labels",
    "InferenceModel": "optimize",
    "fold_batchnorm": "optimize",
    "optimize_for_inference": "optimize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if (module := _EXPORTS.get(name)) is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)

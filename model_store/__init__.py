"""Models and the workers that serve them, in two rooms.

- ``model_store.zoo``: the model zoo. Attention layers (one file per kind), the ResNet they plug
  into, the registry of served names, checkpoint import, labels, and the optimisation for
  inference (BN folding, ``torch.compile``, AOTInductor, OpenVINO). Knows nothing of serving.
- ``model_store.worker``: the serving tier. Image decoding and preprocessing, the classifier a
  TorchServe worker runs, the handler, the protocol the gateway speaks to it, archive building
  and the TorchServe launcher.

The names below load on first use: the gateway imports ``model_store.zoo.registry``,
``model_store.worker.images``, ``model_store.worker.protocol`` and ``model_store.signals``,
which must not import torch (the gateway's image has none).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MODELS": "zoo.registry",
    "get_spec": "zoo.registry",
    "TINY_ARCH": "zoo.models",
    "count_parameters": "zoo.models",
    "create_model": "zoo.models",
    "CheckpointError": "zoo.checkpoint",
    "read_checkpoint": "zoo.checkpoint",
    "save_checkpoint": "zoo.checkpoint",
    "load_labels": "zoo.labels",
    "InferenceModel": "zoo.optimize",
    "fold_batchnorm": "zoo.optimize",
    "optimize_for_inference": "zoo.optimize",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if (module := _EXPORTS.get(name)) is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{module}", __name__), name)

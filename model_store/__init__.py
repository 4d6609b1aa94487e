"""Models and the workers that serve them, in four rooms.

- ``model_store.zoo``: the model zoo. Attention layers (one file per kind), the ResNet they plug
  into, the registry of served names, checkpoint import, labels, and the optimisation for
  inference (BN folding, ``torch.compile``, AOTInductor, OpenVINO). Knows nothing of serving.
- ``model_store.worker``: the serving core. Decoding and preprocessing, the classifier a
  TorchServe worker runs, its handler, and the archive builder that packs them with a model.
- ``model_store.torchserve``: TorchServe as a process: the launcher, its supervisor, the
  read-only management gate of a worker container.
- ``model_store.demo``: the synthetic images and tiny models tests and demos train in seconds.

What the gateway and the workers agree on is the top-level ``contract`` package. The names
below load on first use: the gateway imports ``model_store.zoo.registry``,
``model_store.zoo.precision`` and ``model_store.signals``, which must not import torch (the
gateway's image has none).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "MODELS": "zoo.registry",
    "get_spec": "zoo.registry",
    "tiny_arch": "zoo.models",
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

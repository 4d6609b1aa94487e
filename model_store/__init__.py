"""Model zoo: ResNet-50 with pluggable SE / ECA / CBAM / SA attention, checkpoints, labels,
and the inference optimisation that TorchServe workers and benchmarks use."""

from .checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from .labels import load_labels
from .models import MODELS, TINY_ARCH, count_parameters, create_model, get_spec
from .optimize import InferenceModel, fold_batchnorm, optimize_for_inference

__all__ = [
    "MODELS",
    "TINY_ARCH",
    "CheckpointError",
    "InferenceModel",
    "count_parameters",
    "create_model",
    "fold_batchnorm",
    "get_spec",
    "load_labels",
    "optimize_for_inference",
    "read_checkpoint",
    "save_checkpoint",
]

"""What the gateway and the TorchServe workers agree on, declared once: the handler, the
launcher and the gateway's TorchServe client all import it. Plain Python (the gateway has no
torch)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Limits and defaults both sides hold to.
MAX_TOP_K = 20
DEFAULT_TOP_K = 5
DEFAULT_BATCH_BUCKETS = (1, 2, 4, 8)
"""Batch sizes compiled and warmed up at load; a batch is padded up to the next one."""
DEFAULT_MAX_BATCH_SIZE = DEFAULT_BATCH_BUCKETS[-1]
"""The gateway's batches by default: never past the largest warmed bucket (a larger batch is
split into several model calls, so batching past it buys nothing)."""
WORKER_RESPONSE_TIMEOUT_S = 30
"""TorchServe's ``responseTimeout``: never above the gateway's ``backend_timeout_s`` (which
defaults to it), so no batch keeps a worker busy for clients that were already answered 504."""
GATEWAY_FED_BATCH_SIZE = 1
"""TorchServe's ``batchSize`` behind the gateway: the gateway forms the batches (one layer)."""

# A worker request: POST /predictions/{model}, multipart, one field per input, in order.
TOP_K_FIELD = "top_k"
PROBABILITIES_FIELD = "probabilities"
"""Asks, as ``"1"``, for every result to carry its input's full softmax, under this key too."""
IMAGE_FIELD_PREFIX = "image_"
TENSOR_FIELD_PREFIX = "tensor_"
"""A field named so carries one preprocessed image instead of an encoded one: float32,
little-endian, ``(3, S, S)`` in row-major order, normalised as the eval pipeline does."""
TENSOR_CHANNELS = 3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
"""The eval pipeline's normalisation: the units of a preprocessed input."""
PIXEL_BOUND = 3 * max(
    max(mean / std, (1 - mean) / std) for mean, std in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)
)
"""The largest magnitude a preprocessed input may hold: three times the eval pipeline's extreme
((1 - 0.406) / 0.225 = 2.64), so 7.92. Finite but extreme values (1e38) drive the model to NaN,
which would fail every image of the batch they share."""
INPUT_FIELD_PREFIXES = {"image": IMAGE_FIELD_PREFIX, "tensor": TENSOR_FIELD_PREFIX}


def input_field(kind: str, index: int) -> str:
    """The field name of input ``index`` (``kind``: image or tensor); names sort in order."""
    return f"{INPUT_FIELD_PREFIXES[kind]}{index:04d}"


# A worker answer: one JSON object per request.
RESULTS_FIELD = "results"
"""One result per input, in order: ``{"predictions": [...]}`` or ``{"error": {...}}``."""
TIMING_FIELD = "timing"
"""In every worker answer: where its time went in the worker (``answers.WorkerTiming``)."""
COMPILED_GRAPHS_FIELD = "compiled_graphs"
"""In every worker answer: graphs compiled in its process so far (a load test's proof that
nothing compiled while it measured)."""

# TorchServe's readiness, as both the launcher and the gateway read it (its keys: ``keys.py``).
DEFAULT_RUN_DIR = Path(".run/torchserve")
"""Where a locally launched TorchServe keeps its config, logs and key file."""
READY_STATUS = "READY"
REQUESTS_COUNTER = "ts_inference_requests_total"
"""TorchServe's Prometheus counter of the inference requests it answered (one per batch)."""


def ready_workers(description: Mapping[str, Any]) -> int:
    """The workers TorchServe's management API lists READY for a model: each takes a batch."""
    return sum(w.get("status") == READY_STATUS for w in description.get("workers", []))


def model_ready(description: Mapping[str, Any]) -> bool:
    """A model is ready when TorchServe's management API lists a READY worker for it: it can
    answer now. The launcher waits for this and the gateway's readiness reports it."""
    return ready_workers(description) > 0

"""What the gateway and the workers agree on, declared once and importable without torch."""

from __future__ import annotations

MAX_TOP_K = 20
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

# The fields of a worker request (multipart, one field per input, in order).
TOP_K_FIELD = "top_k"
PROBABILITIES_FIELD = "probabilities"
"""Asks, as ``"1"``, for every result to carry its input's full softmax, under this key too."""
TENSOR_FIELD_PREFIX = "tensor_"
"""A field named so carries one preprocessed image instead of an encoded one: float32,
little-endian, ``(3, S, S)`` in row-major order, normalised as the eval pipeline does."""
IMAGE_FIELD_PREFIX = "image_"
TENSOR_CHANNELS = 3
COMPILED_GRAPHS_FIELD = "compiled_graphs"
"""In every worker answer: graphs compiled in its process so far (a load test's proof that
nothing compiled while it measured)."""

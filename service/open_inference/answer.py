"""An inference answer: each output asked for, as JSON or as binary data after the JSON object
(the binary tensor data extension), the full softmax (FP32) or the classification extension's
``"score:index:label"`` strings (BYTES)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..backends.base import WorkerResult
from .protocol import (
    BINARY_DATA_SIZE,
    BYTES,
    FP32,
    HEADER_LENGTH,
    ResponseOutput,
)
from .request import DecodedRequest, WantedOutput
from .tensors import float32_bytes, length_prefixed


def encode_response(
    model: str, version: str, request: DecodedRequest, results: Sequence[WorkerResult]
) -> tuple[bytes, dict[str, str]]:
    """The answer's body and headers: JSON, or JSON then binary data when an output is binary."""
    outputs, blobs = [], []
    for wanted in request.outputs:
        output, blob = _output(wanted, results)
        outputs.append(output)
        blobs += [blob] if blob is not None else []
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        body["id"] = request.id
    header = json.dumps(body, separators=(",", ":")).encode()
    if not blobs:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(blobs), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }


def _output(wanted: WantedOutput, results: Sequence[WorkerResult]) -> tuple[dict, bytes | None]:
    """One output tensor as JSON, and its binary data when it is sent as binary."""
    if wanted.classification is None:
        rows = [result.probabilities or [] for result in results]
        values: list[Any] = [value for row in rows for value in row]
        tensor = ResponseOutput(
            name=wanted.name, shape=[len(rows), len(rows[0])], datatype=FP32, data=values
        )
        blob = float32_bytes(values) if wanted.binary else None
    else:
        k = len(results[0].predictions[: wanted.classification])  # at most the classes
        values = [
            f"{p.score:f}:{p.index}:{p.label}" for result in results for p in result.predictions[:k]
        ]
        tensor = ResponseOutput(
            name=wanted.name, shape=[len(results), k], datatype=BYTES, data=values
        )
        blob = b"".join(length_prefixed(v.encode()) for v in values) if wanted.binary else None
    if blob is not None:
        tensor.data = None
        tensor.parameters = {BINARY_DATA_SIZE: len(blob)}
    return tensor.model_dump(exclude_none=True), blob

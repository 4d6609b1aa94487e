"""Reading an inference request (a JSON object, optionally followed by binary tensor data) into
validated inputs, and writing its answer (each output as JSON or binary, the classification
extension's strings), with numbers and bytes only: the gateway has no numpy.

Every way a body can be wrong is a 400 that says what is wrong, decided before anything is
queued: a bad request never reaches a batch that others share."""

from __future__ import annotations

import array
import base64
import binascii
import json
import math
import struct
import sys
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from contract.images import ImageLimits
from contract.protocol import (
    MAX_TOP_K,
    TENSOR_CHANNELS,
)

from ..backends.base import WorkerResult
from ..errors import ApiError, unavailable
from ..uploads import Upload, too_many_images, validate_image
from .protocol import (
    BINARY_DATA_SIZE,
    BYTES,
    FP32,
    HEADER_LENGTH,
    IMAGES_INPUT,
    MAX_TIMEOUT_US,
    PIXELS_INPUT,
    PROBABILITIES_OUTPUT,
    InferenceRequest,
    RequestInput,
    ResponseOutput,
)

INPUT_TYPES = {IMAGES_INPUT: BYTES, PIXELS_INPUT: FP32}
LENGTH_PREFIX = struct.Struct("<I")
"""A BYTES element in binary: its length as a little-endian uint32, then its bytes."""
FLOAT32 = 4
GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS
"""zlib's window bits that accept either header (gzip, or deflate's zlib wrapping)."""


def malformed(message: str) -> ApiError:
    return ApiError(400, "malformed_request", message)


@dataclass(frozen=True)
class WantedOutput:
    name: str
    classification: int | None
    """``k`` when the top-k are asked for as ``"score:index:label"`` strings."""
    binary: bool


@dataclass(frozen=True)
class DecodedRequest:
    id: str | None
    uploads: list[Upload]
    outputs: list[WantedOutput]
    timeout_ms: float | None
    """The request's own deadline (its ``timeout`` parameter), if it set one."""

    @property
    def top_k(self) -> int:
        return max((o.classification or 1 for o in self.outputs), default=1)

    @property
    def probabilities(self) -> bool:
        return any(o.classification is None for o in self.outputs)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A request body sent with ``Content-Encoding`` gzip or deflate (tritonclient's request
    compression), inflated no further than ``limit`` bytes: a compression bomb is a 413."""
    if encoding in (None, "", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(
            415, "unsupported_media_type", f"Content-Encoding {encoding!r}: send gzip or deflate"
        )
    inflater = zlib.decompressobj(GZIP_OR_ZLIB)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise malformed(f"the body is not valid {encoding} data") from None
    if len(inflated) > limit:
        raise ApiError(413, "payload_too_large", f"the inflated body exceeds {limit:,} bytes")
    if not inflater.eof:
        raise malformed(f"the {encoding} data is cut off")
    return inflated


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON object and a view of the binary data after it (``Inference-Header-Content-Length``):
    the body's bytes are not copied, only each input taken from them."""
    if header_length is None:
        return body, memoryview(b"")
    if not header_length.isdigit() or not 0 < int(header_length) <= len(body):
        raise malformed(
            f"{HEADER_LENGTH} must be the length of the JSON object in the body, between 1 and "
            f"the body's {len(body):,} bytes; got {header_length!r}"
        )
    view = memoryview(body)
    return bytes(view[: int(header_length)]), view[int(header_length) :]


def parse_request(header: bytes) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise malformed(f"not an inference request: {where}: {first['msg']}") from None


def decode_request(
    body: bytes,
    header_length: str | None,
    limits: ImageLimits,
    max_images: int,
    input_size: int | None,
) -> DecodedRequest:
    """The validated inputs of one request. ``input_size``: the side of the preprocessed
    images the model takes (``None`` while its worker has not said)."""
    header, binary = split_body(body, header_length)
    request = parse_request(header)
    if len(request.inputs) != 1 or request.inputs[0].name not in INPUT_TYPES:
        names = [i.name for i in request.inputs]
        raise malformed(
            f"send exactly one input, {IMAGES_INPUT!r} ({BYTES}) or {PIXELS_INPUT!r} ({FP32}); "
            f"got {names}"
        )
    [tensor] = request.inputs
    outputs = _wanted_outputs(request)  # parameters first: they cost nothing to check
    timeout = request.parameters.timeout
    if timeout is not None and not 0 <= timeout <= MAX_TIMEOUT_US:
        raise ApiError(
            422,
            "invalid_parameters",
            f"timeout must be >= 0 µs and at most {MAX_TIMEOUT_US} (uint64), got "
            f"{str(timeout)[:24]}{'...' if len(str(timeout)) > 24 else ''}",
        )
    count = _batch_count(tensor, max_images)
    raw = _binary_part(tensor, binary)
    if tensor.name == IMAGES_INPUT:
        images = _byte_elements(raw, count) if raw is not None else _base64_elements(tensor)
        uploads = [validate_image(data, index, limits) for index, data in enumerate(images)]
    else:
        if input_size is None:
            raise unavailable("the model's worker is not ready; retry shortly", 5.0)
        uploads = _pixel_uploads(tensor, raw, count, input_size)
    return DecodedRequest(request.id, uploads, outputs, timeout / 1000 if timeout else None)


def _batch_count(tensor: RequestInput, max_images: int) -> int:
    rank = 1 if tensor.name == IMAGES_INPUT else 4
    if tensor.datatype != INPUT_TYPES[tensor.name]:
        raise malformed(
            f"input {tensor.name!r} is {INPUT_TYPES[tensor.name]}, got {tensor.datatype!r}"
        )
    if len(tensor.shape) != rank or tensor.shape[0] < 1 or min(tensor.shape) < 0:
        raise malformed(
            f"input {tensor.name!r} has {rank} dimension(s) of positive size, got {tensor.shape}"
        )
    if tensor.shape[0] > max_images:
        raise too_many_images(tensor.shape[0], max_images)
    return tensor.shape[0]


def _binary_part(tensor: RequestInput, binary: memoryview) -> memoryview | None:
    """The input's binary data, or ``None`` when it came as JSON ``data``."""
    size = tensor.parameters.binary_data_size
    if (size is None) == (tensor.data is None):
        raise malformed(
            f"input {tensor.name!r} needs its values either as 'data' or as binary data "
            f"after the JSON ('{BINARY_DATA_SIZE}' parameter), not "
            + ("both" if size is not None else "neither")
        )
    if (size or 0) != len(binary):
        raise malformed(
            f"{len(binary):,} bytes of binary data follow the JSON object, but the inputs' "
            f"{BINARY_DATA_SIZE} add up to {size or 0:,}"
        )
    return binary if size is not None else None


def _byte_elements(raw: memoryview, count: int) -> list[bytes]:
    elements, at = [], 0
    while at < len(raw) and len(elements) <= count:
        if at + LENGTH_PREFIX.size > len(raw):
            raise malformed(f"{BYTES} element {len(elements)}: its length prefix is cut off")
        (size,) = LENGTH_PREFIX.unpack_from(raw, at)
        at += LENGTH_PREFIX.size
        if at + size > len(raw):
            raise malformed(
                f"{BYTES} element {len(elements)} claims {size:,} bytes, {len(raw) - at:,} follow"
            )
        elements.append(bytes(raw[at : at + size]))
        at += size
    if len(elements) != count or at != len(raw):
        raise malformed(f"input {IMAGES_INPUT!r} has shape [{count}]: its binary data does not")
    return elements


def _base64_elements(tensor: RequestInput) -> list[bytes]:
    data = tensor.data or []
    if len(data) != tensor.shape[0] or not all(isinstance(item, str) for item in data):
        raise malformed(
            f"input {IMAGES_INPUT!r} as JSON: one base64 string per image, {tensor.shape[0]} "
            "in all (or send the images as binary data)"
        )
    try:
        return [base64.b64decode(item, validate=True) for item in data]
    except binascii.Error:
        raise malformed(f"input {IMAGES_INPUT!r}: an element is not valid base64") from None


def _pixel_uploads(
    tensor: RequestInput, raw: memoryview | None, count: int, input_size: int
) -> list[Upload]:
    """Float32 little-endian bytes per image, checked for shape and size. Their values are the
    worker's to judge (``contract.protocol.PIXEL_BOUND``: NaN, infinity or past the eval
    pipeline's range fail that image alone, ``invalid_tensor``), as for any direct caller."""
    image_shape = [TENSOR_CHANNELS, input_size, input_size]
    if tensor.shape[1:] != image_shape:
        raise malformed(
            f"input {PIXELS_INPUT!r} has shape [-1, {', '.join(map(str, image_shape))}] for "
            f"this model, got {tensor.shape}"
        )
    per_image = math.prod(image_shape)
    if raw is not None:
        if len(raw) != count * per_image * FLOAT32:
            raise malformed(
                f"input {PIXELS_INPUT!r} {tensor.shape} is {count * per_image * FLOAT32:,} "
                f"bytes of {FP32}, got {len(raw):,}"
            )
        values = array.array("f")
        values.frombytes(raw)
        if sys.byteorder == "big":
            values.byteswap()
    else:
        values = _json_floats(tensor.data or [], count * per_image)
        raw = memoryview(_float32_bytes(values))
    step = per_image * FLOAT32
    return [
        Upload(bytes(raw[i * step : (i + 1) * step]), input_size * input_size, kind="tensor")
        for i in range(count)
    ]


def _json_floats(data: list[Any], expected: int) -> array.array[float]:
    """Flat or nested row-major numbers (bools and strings refused) as float32."""
    flat: list[Any] = data
    while flat and isinstance(flat[0], list):
        if not all(isinstance(row, list) for row in flat):
            raise malformed(f"input {PIXELS_INPUT!r}: nested 'data' mixes lists and numbers")
        flat = [value for row in flat for value in row]
    if len(flat) != expected:
        raise malformed(f"input {PIXELS_INPUT!r}: {len(flat):,} values for {expected:,}")
    if any(isinstance(value, bool) for value in flat):
        raise malformed(f"input {PIXELS_INPUT!r}: 'data' holds booleans, not numbers")
    try:
        return array.array("f", flat)
    except (TypeError, OverflowError):
        raise malformed(
            f"input {PIXELS_INPUT!r}: 'data' holds something else than float32 numbers"
        ) from None


def _wanted_outputs(request: InferenceRequest) -> list[WantedOutput]:
    binary_default = bool(request.parameters.binary_data_output)
    if request.outputs is None:
        return [WantedOutput(PROBABILITIES_OUTPUT, None, binary_default)]
    wanted = []
    for output in request.outputs:
        if output.name != PROBABILITIES_OUTPUT:
            raise malformed(
                f"unknown output {output.name!r}; the output is {PROBABILITIES_OUTPUT!r}"
            )
        k = output.parameters.classification or None  # 0: no classification (Triton's)
        if k is not None and not 1 <= k <= MAX_TOP_K:
            raise ApiError(
                422, "invalid_parameters", f"classification must be in 1..{MAX_TOP_K}, got {k}"
            )
        binary = output.parameters.binary_data
        wanted.append(WantedOutput(output.name, k, binary_default if binary is None else binary))
    if len({o.name for o in wanted}) != len(wanted):
        raise malformed("an output is asked for twice (answers are told apart by name)")
    return wanted


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
        blob = _float32_bytes(values) if wanted.binary else None
    else:
        k = len(results[0].predictions[: wanted.classification])  # at most the classes
        values = [
            f"{p.score:f}:{p.index}:{p.label}" for result in results for p in result.predictions[:k]
        ]
        tensor = ResponseOutput(
            name=wanted.name, shape=[len(results), k], datatype=BYTES, data=values
        )
        blob = b"".join(_length_prefixed(v.encode()) for v in values) if wanted.binary else None
    if blob is not None:
        tensor.data = None
        tensor.parameters = {BINARY_DATA_SIZE: len(blob)}
    return tensor.model_dump(exclude_none=True), blob


def _float32_bytes(values: Iterable[float]) -> bytes:
    """Little-endian float32, as the binary tensor data extension sends FP32."""
    packed = array.array("f", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _length_prefixed(data: bytes) -> bytes:
    return LENGTH_PREFIX.pack(len(data)) + data

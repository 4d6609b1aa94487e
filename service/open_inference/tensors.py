"""An inference request's tensors as the gateway takes them: how many images, their bytes
(binary data after the JSON object, or JSON: base64 strings, numbers), and preprocessed pixels
checked for shape and size; and the float32 and length-prefixed encodings answers use. Numbers
and bytes only: the gateway has no numpy."""

from __future__ import annotations

import array
import base64
import binascii
import math
import struct
import sys
from collections.abc import Iterable
from typing import Any

from contract.protocol import TENSOR_CHANNELS

from ..inputs import Upload
from ..uploads import too_many_images
from .body import malformed
from .protocol import (
    BINARY_DATA_SIZE,
    BYTES,
    FP32,
    IMAGES_INPUT,
    INPUT_TYPES,
    PIXELS_INPUT,
    RequestInput,
)

LENGTH_PREFIX = struct.Struct("<I")
"""A BYTES element in binary: its length as a little-endian uint32, then its bytes."""
FLOAT32 = 4


def batch_count(tensor: RequestInput, max_images: int) -> int:
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


def binary_part(tensor: RequestInput, binary: memoryview) -> memoryview | None:
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


def byte_elements(raw: memoryview, count: int) -> list[bytes]:
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


def base64_elements(tensor: RequestInput) -> list[bytes]:
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


def pixel_uploads(
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
        raw = memoryview(float32_bytes(values))
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


def float32_bytes(values: Iterable[float]) -> bytes:
    """Little-endian float32, as the binary tensor data extension sends FP32."""
    packed = array.array("f", values)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def length_prefixed(data: bytes) -> bytes:
    return LENGTH_PREFIX.pack(len(data)) + data

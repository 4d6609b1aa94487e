"""An inference request's body before its tensors are read: inflated (gzip, deflate) within the
byte limit, split into the JSON object and the binary data after it, the JSON parsed. Every way
it can be wrong is a 400 that says what is wrong."""

from __future__ import annotations

import zlib

from pydantic import ValidationError

from ..errors import ApiError
from .protocol import (
    HEADER_LENGTH,
    InferenceRequest,
)

GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS
"""zlib's window bits that accept either header (gzip, or deflate's zlib wrapping)."""


def malformed(message: str) -> ApiError:
    return ApiError(400, "malformed_request", message)


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

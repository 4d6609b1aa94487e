"""An inference request's body before its tensors are read: inflated (gzip, deflate) within the
byte limit and a ratio, split into the JSON object and the binary data after it, the JSON's
shape bounded, then parsed. Every way it can be wrong is a 400 (413 past a limit) that says
what is wrong.

Parsing builds every object of the JSON before anything is checked (pydantic's ``max_length``
included): 10 MiB of ``{"name":"a"}`` outputs became ~430 MB of objects for 10 s. So what a
request needs of objects, members and strings is counted from the bytes first: a request has a
handful of each, images one string apiece; only FP32 pixels come as many values, numbers.
"""

from __future__ import annotations

import re
import zlib

from pydantic import ValidationError

from ..errors import ApiError
from .protocol import (
    HEADER_LENGTH,
    InferenceRequest,
)

GZIP_OR_ZLIB = 32 + zlib.MAX_WBITS
"""zlib's window bits that accept either header (gzip, or deflate's zlib wrapping)."""
MAX_INFLATE_RATIO = 100
"""How much larger than sent a compressed body may inflate: JSON numbers and base64 compress
2-4 fold, binary tensors barely; a bomb (25 KB of JSON to 10 MiB) 400-fold."""
MIN_INFLATED_LIMIT = 2**20
"""A small compressed body may always inflate this far, whatever its ratio."""
MAX_BINARY_HEADER_BYTES = 64 * 1024
"""The JSON object before binary tensor data: names, shapes and parameters, no values."""
MAX_JSON_CONTAINERS = 65_536
"""Objects and arrays in the JSON: a request has a dozen, nested FP32 data one array per row
(16 images of 3 x 224 rows: 10,817)."""
MAX_JSON_MEMBERS = 1_024
"""Object members (``"name": value``) in the JSON: a request has tens."""
MAX_JSON_STRINGS = 2_048
"""Strings in the JSON, keys included: names, types, and one base64 string per image."""
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def malformed(message: str) -> ApiError:
    return ApiError(400, "malformed_request", message)


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """A request body sent with ``Content-Encoding`` gzip or deflate (tritonclient's request
    compression), inflated no further than ``limit`` bytes nor ``MAX_INFLATE_RATIO`` times its
    size: a compression bomb is a 413."""
    if encoding in (None, "", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(
            415, "unsupported_media_type", f"Content-Encoding {encoding!r}: send gzip or deflate"
        )
    by_ratio = max(MIN_INFLATED_LIMIT, MAX_INFLATE_RATIO * len(body))
    inflater = zlib.decompressobj(GZIP_OR_ZLIB)
    try:
        inflated = inflater.decompress(body, min(limit, by_ratio) + 1)
    except zlib.error:
        raise malformed(f"the body is not valid {encoding} data") from None
    if len(inflated) > limit:
        raise ApiError(413, "payload_too_large", f"the inflated body exceeds {limit:,} bytes")
    if len(inflated) > by_ratio:
        raise ApiError(
            413,
            "payload_too_large",
            f"the body inflates more than {MAX_INFLATE_RATIO} times its {len(body):,} bytes",
        )
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
    if int(header_length) > MAX_BINARY_HEADER_BYTES:
        raise ApiError(
            413,
            "payload_too_large",
            f"the JSON object before binary data is {int(header_length):,} bytes, limit "
            f"{MAX_BINARY_HEADER_BYTES:,}: tensor values go in the binary data",
        )
    view = memoryview(body)
    return bytes(view[: int(header_length)]), view[int(header_length) :]


def check_json_shape(header: bytes) -> None:
    """Refuses JSON holding more objects, arrays, members or strings than a request needs,
    before one is built. Counted in the bytes (C speed); only past a bound are strings, which
    may hold any character, taken out to count exactly."""
    counts = _json_counts(header)
    if any(count > bound for count, bound in zip(counts, JSON_BOUNDS, strict=True)):
        counts = _json_counts(_JSON_STRING.sub(b'""', header))
    for count, bound, what in zip(counts, JSON_BOUNDS, JSON_PARTS, strict=True):
        if count > bound:
            raise ApiError(
                413,
                "payload_too_large",
                f"the JSON object holds {count:,} {what}, limit {bound:,}: an inference request "
                "needs a few (and one string per image)",
            )


JSON_BOUNDS = (MAX_JSON_CONTAINERS, MAX_JSON_MEMBERS, MAX_JSON_STRINGS)
JSON_PARTS = ("objects and arrays", "members", "strings")


def _json_counts(text: bytes) -> tuple[int, int, int]:
    return text.count(b"{") + text.count(b"["), text.count(b":"), text.count(b'"') // 2


def parse_request(header: bytes) -> InferenceRequest:
    check_json_shape(header)
    try:
        return InferenceRequest.model_validate_json(header)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"])) or "body"
        raise malformed(f"not an inference request: {where}: {first['msg']}") from None

"""A batch as one binary body: how the gateway sends a worker its inputs.

TorchServe's frontend decodes a multipart body itself, slowly for large parts: a 5 MB photo
sent as a multipart part cost 58 ms outside the worker's handler, the same bytes as a raw body
26 ms (``bench/README.md``, "What a user is served"). A raw body reaches the handler as it came,
so a batch travels as one: ``MAGIC``, the header's length (4 bytes, big-endian), a JSON header
(``top_k``, ``probabilities`` and each input's kind and length, in order), then the inputs'
bytes back to back. Direct clients keep the multipart fields and the raw image body of
``protocol``: no image format starts with ``MAGIC``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from .protocol import INPUT_FIELD_PREFIXES, PROBABILITIES_FIELD, TOP_K_FIELD

MAGIC = b"\x00attention-serving batch\x01"
CONTENT_TYPE = "application/octet-stream"
MAX_HEADER_BYTES = 64 * 1024
"""Room for the kinds and lengths of a thousand inputs; a longer header is refused unread."""
INPUTS_FIELD = "inputs"


class MalformedBatch(ValueError):
    """A body that starts as a batch but does not add up."""


@dataclass(frozen=True)
class Batch:
    top_k: int
    probabilities: bool
    inputs: list[tuple[str, memoryview]]
    """Each input's kind (``image`` or ``tensor``) and bytes, in order: views of the body."""


def encode(inputs: Sequence[tuple[str, bytes]], top_k: int, probabilities: bool) -> bytes:
    """The body of a batch of ``(kind, bytes)`` inputs, joined once."""
    header = json.dumps(
        {
            TOP_K_FIELD: top_k,
            PROBABILITIES_FIELD: probabilities,
            INPUTS_FIELD: [[kind, len(data)] for kind, data in inputs],
        }
    ).encode()
    return b"".join([MAGIC, len(header).to_bytes(4, "big"), header, *(d for _, d in inputs)])


def is_batch(body: bytes | bytearray | memoryview) -> bool:
    return bytes(body[: len(MAGIC)]) == MAGIC


def decode(body: bytes | bytearray | memoryview) -> Batch:
    """The batch a body holds; ``MalformedBatch`` says what does not add up."""
    view = memoryview(body)
    start = len(MAGIC) + 4
    if not is_batch(view) or len(view) < start:
        raise MalformedBatch("not a batch body")
    length = int.from_bytes(view[len(MAGIC) : start], "big")
    if length > MAX_HEADER_BYTES or start + length > len(view):
        raise MalformedBatch(f"a batch header of {length} bytes")
    try:
        header = json.loads(bytes(view[start : start + length]))
        top_k, probabilities = header[TOP_K_FIELD], header[PROBABILITIES_FIELD]
        described = [(str(kind), int(size)) for kind, size in header[INPUTS_FIELD]]
    except (ValueError, TypeError, KeyError) as exc:
        raise MalformedBatch(f"an unreadable batch header: {exc}") from None
    if not isinstance(top_k, int) or not isinstance(probabilities, bool):
        raise MalformedBatch("top_k must be an integer and probabilities a boolean")
    if unknown := {kind for kind, _ in described} - set(INPUT_FIELD_PREFIXES):
        raise MalformedBatch(f"unknown input kinds {sorted(unknown)}")
    offset = start + length
    if any(size < 0 for _, size in described) or offset + sum(size for _, size in described) != len(
        view
    ):
        raise MalformedBatch("the inputs' lengths do not add up to the body")
    inputs = []
    for kind, size in described:
        inputs.append((kind, view[offset : offset + size]))
        offset += size
    return Batch(top_k, probabilities, inputs)

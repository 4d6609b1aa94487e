"""What a batch carries: one validated input, whichever protocol brought it. Its own module so
that the batcher's users (dispatcher, backends) need nothing of the HTTP layer that reads it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

InputKind = Literal["image", "tensor"]


@dataclass(frozen=True)
class Upload:
    """One validated input: an encoded image, or (``tensor``) a preprocessed one as float32
    bytes (``contract.protocol.TENSOR_FIELD_PREFIX``); ``pixels``: what it costs a
    batch."""

    data: bytes
    pixels: int
    kind: InputKind = "image"

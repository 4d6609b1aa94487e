"""What a worker is asked: one client request among those served as one batch, and a
preprocessed input as it travels, checked as the model takes it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contract.errors import INVALID_TENSOR
from contract.images import ImageError
from contract.protocol import (
    PIXEL_BOUND,
    TENSOR_CHANNELS,
)


@dataclass(frozen=True)
class ClassifyRequest:
    """One client request among those a worker serves as one batch."""

    inputs: list[bytes | np.ndarray]
    top_k: int | None
    probabilities: bool


def tensor_input(data: bytes) -> np.ndarray:
    """A preprocessed input as it travels (float32, little-endian, row-major) -> the array
    ``ImageClassifier.classify`` takes; its shape is checked there, against the model."""
    if len(data) % 4:  # not whole float32 values: fails the check as raw bytes
        return np.frombuffer(data, dtype=np.uint8)
    return np.frombuffer(data, dtype="<f4").astype(np.float32, copy=False)


def checked_tensor(tensor: np.ndarray, input_size: int) -> np.ndarray:
    """A preprocessed input as the model takes it, or ``invalid_tensor`` saying why not."""
    shape = (TENSOR_CHANNELS, input_size, input_size)
    if tensor.dtype != np.float32 or tensor.size != math.prod(shape):
        raise ImageError(
            INVALID_TENSOR,
            f"a preprocessed input must be {math.prod(shape):,} float32 values "
            f"{list(shape)}, got {tensor.size:,} {tensor.dtype}",
        )
    if not np.abs(tensor).max() <= PIXEL_BOUND:  # NaN compares false too
        raise ImageError(
            INVALID_TENSOR,
            f"a preprocessed input holds NaN, infinity or values beyond ±{PIXEL_BOUND:.2f}",
        )
    return tensor.reshape(shape)

"""What decoding a batch may cost: the decoded pixels one batch may spend (images past it fail
alone, 413), and the pixels being decoded at once across the worker's decoding threads (memory
holds at most one largest allowed image however many decode side by side)."""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from contract.errors import BATCH_TOO_LARGE
from contract.images import ImageError


class BatchPixelBudget:
    """Decoded pixels one batch may still spend; images past it fail alone (413)."""

    def __init__(self, pixels: int) -> None:
        self.left = pixels

    def take(self, pixels: int) -> None:
        if pixels > self.left:
            raise ImageError(
                BATCH_TOO_LARGE,
                f"the batch's images exceed the worker's decoded-pixel budget ({pixels:,} "
                f"pixels, {self.left:,} left); send fewer or smaller images at once",
            )
        self.left -= pixels


def _libc_malloc_trim() -> Callable[[int], int]:
    """glibc's ``malloc_trim``; where the C library has none (musl), a call that does nothing."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return lambda pad: 0
    trim.argtypes = [ctypes.c_size_t]
    return trim


_malloc_trim = _libc_malloc_trim()


def return_freed_memory() -> None:
    """Give freed heap pages back to the system. Each decoding thread allocates from its own
    glibc arena, which keeps what an image freed for that thread's next image: without this,
    two threads decoding one large image after the other held both (13 B/pixel, against 7.5
    with one thread; ``bench.memory``)."""
    _malloc_trim(0)


class PixelPool:
    """Pixels being decoded at once, at most ``capacity`` (one image is always let in alone,
    whatever its size, so the pool never deadlocks). Leaving it returns freed memory to the
    system before the next image may start."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._changed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        with self._changed:
            self._changed.wait_for(lambda: not self.in_use or self.in_use + pixels <= self.capacity)
            self.in_use += pixels
        try:
            yield
        finally:
            return_freed_memory()
            with self._changed:
                self.in_use -= pixels
                self._changed.notify_all()

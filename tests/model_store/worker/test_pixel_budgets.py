"""The pool of pixels being decoded at once: small images decode side by side, large ones one
after the other, and an image larger than the pool still gets in alone."""

from __future__ import annotations

import threading
import time

from model_store.worker.pixel_budgets import PixelPool


def overlapping(pool: PixelPool, sizes: list[int]) -> int:
    """The most holds that were inside the pool at the same moment."""
    inside, peak, lock = 0, 0, threading.Lock()

    def decode(pixels: int) -> None:
        nonlocal inside, peak
        with pool.hold(pixels):
            with lock:
                inside += 1
                peak = max(peak, inside)
            time.sleep(0.2)
            with lock:
                inside -= 1

    threads = [threading.Thread(target=decode, args=(size,)) for size in sizes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert pool.in_use == 0
    return peak


def test_small_images_decode_side_by_side():
    assert overlapping(PixelPool(100), [30, 30, 30]) == 3


def test_images_that_together_exceed_the_pool_take_turns():
    assert overlapping(PixelPool(100), [60, 60]) == 1


def test_an_image_larger_than_the_pool_gets_in_alone():
    assert overlapping(PixelPool(100), [150, 150]) == 1

"""The upload pool: synthetic JPEG/PNG images of varied sizes, generated once per process."""

from __future__ import annotations

from functools import cache

from model_store.worker.synthetic import encode, make_images

SIZES = ((320, 240), (640, 480), (500, 500), (1024, 768), (224, 224), (800, 600))


@cache
def upload_pool(count: int = 24, seed: int = 0) -> tuple[tuple[bytes, str], ...]:
    """``(bytes, content type)`` pairs; every third image a PNG, the rest JPEG."""
    pool = []
    for i in range(count):
        [image], _ = make_images(1, seed=seed + i, size=SIZES[i % len(SIZES)])
        fmt, content_type = ("PNG", "image/png") if i % 3 == 2 else ("JPEG", "image/jpeg")
        pool.append((encode(image, fmt), content_type))
    return tuple(pool)

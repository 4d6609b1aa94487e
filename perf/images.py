"""The uploads every benchmark and load test sends: synthetic photos (``model_store.demo``)
encoded once per process, of sizes chosen by what is measured."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

from contract.images import FORMATS, sniff_format
from model_store.demo.synthetic import encode, make_images

SMALL_UPLOADS = ((320, 240), (640, 480), (500, 500), (800, 600))
"""Web-sized uploads: what the gateway and TorchServe-direct benchmarks send."""
MIXED_UPLOADS = ((320, 240), (640, 480), (500, 500), (1024, 768), (224, 224), (800, 600))
"""The load tests' mix, thumbnails to 0.8 megapixels."""
CAMERA_UPLOADS = ((640, 480), (1024, 768), (1280, 960), (1600, 1200), (2048, 1536))
"""Real-sized uploads: 0.3 to 3 megapixels."""
PHOTO_UPLOADS = ((2592, 1944), (3264, 2448), (4000, 3000))
"""Phone cameras' own sizes: 5, 8 and 12 megapixels (2.4 to 5.3 MB at quality 90)."""


@cache
def image_pool(
    count: int = 32,
    sizes: Sequence[tuple[int, int]] = SMALL_UPLOADS,
    quality: int = 90,
    png_every: int = 0,
    seed: int = 0,
) -> tuple[bytes, ...]:
    """``count`` varied synthetic images cycling through ``sizes``: JPEGs at ``quality``, every
    ``png_every``-th one a PNG (0: none)."""
    pool = []
    for i in range(count):
        [image], _ = make_images(1, seed=seed + i, size=sizes[i % len(sizes)])
        png = png_every and i % png_every == png_every - 1
        pool.append(encode(image, "PNG") if png else encode(image, "JPEG", quality=quality))
    return tuple(pool)


def media_type(data: bytes) -> str:
    """The Content-Type an upload is sent with (by its signature)."""
    return FORMATS[sniff_format(data)]

"""Synthetic labelled images (coloured shapes on noise) for tests, demos and load tests.

No data set can be downloaded here, so correctness of the whole serving path is proved on a
tiny model trained on these: if preprocessing, batching or label order broke, it would show.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("red circle", "green square", "blue triangle", "yellow cross")
_COLOURS = ((215, 40, 40), (40, 175, 60), (40, 80, 215), (225, 200, 30))


def draw_shape(
    label: int, rng: np.random.Generator, size: int | tuple[int, int] = 64
) -> Image.Image:
    """One image of class ``label``: its shape in its colour, random place, scale and noise."""
    width, height = (size, size) if isinstance(size, int) else size
    noise = rng.integers(70, 150, (height, width, 1)) + rng.integers(-20, 20, (height, width, 3))
    image = Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    side = min(width, height)
    radius = side * rng.uniform(0.2, 0.32)
    cx = width / 2 + rng.uniform(-0.12, 0.12) * side
    cy = height / 2 + rng.uniform(-0.12, 0.12) * side
    colour = tuple(
        int(c) for c in np.clip(np.array(_COLOURS[label]) + rng.integers(-25, 25, 3), 0, 255)
    )
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    shape = CLASS_NAMES[label].split()[1]
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon(
            [(cx, cy - radius), (cx - radius, cy + radius), (cx + radius, cy + radius)], fill=colour
        )
    else:
        bar = radius / 3
        draw.rectangle((cx - radius, cy - bar, cx + radius, cy + bar), fill=colour)
        draw.rectangle((cx - bar, cy - radius, cx + bar, cy + radius), fill=colour)
    return image


def make_images(
    count: int, seed: int = 0, size: int | tuple[int, int] = 64
) -> tuple[list[Image.Image], list[int]]:
    """``count`` images with balanced labels, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    labels = [i % len(CLASS_NAMES) for i in range(count)]
    rng.shuffle(labels)
    return [draw_shape(label, rng, size) for label in labels], labels


def encode(image: Image.Image, fmt: str = "JPEG", **params: int) -> bytes:
    """The image as file bytes, the way a client would upload it."""
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()

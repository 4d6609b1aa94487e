"""The standard ImageNet eval preprocessing, pixel for pixel as torchvision computes it.

``Resize(256)`` on the shorter side (Pillow bilinear, which is antialiased; the new long side
truncated with ``int()``), ``CenterCrop(224)`` (offsets rounded with Python's ``round``),
``ToTensor`` (divide by 255) and ``Normalize`` with the ImageNet mean and std, in float32 and in
that order, so a checkpoint evaluated offline with torchvision gets the same scores when served.
Per-image work is :func:`resize_center_crop` (Pillow's C code, right after decoding, so only the
small crop is kept); normalisation is one vectorised op over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from contract.protocol import IMAGENET_MEAN, IMAGENET_STD

CROP_FRACTION = 0.875


def resize_side(size: int, crop_fraction: float = CROP_FRACTION) -> int:
    """The shorter side before the crop: 256 for 224 (timm's ``floor(size / crop_pct)``)."""
    return math.floor(size / crop_fraction)


def resized_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """torchvision's ``_compute_resized_output_size`` for an int size: long side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(short_side * long / short)
    return (short_side, new_long) if width <= height else (new_long, short_side)


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """torchvision's ``center_crop`` offsets: ``int(round((side - size) / 2.0))``, so halves go
    to the even neighbour (Python rounds half to even)."""
    top = round((height - size) / 2.0)
    left = round((width - size) / 2.0)
    return left, top, left + size, top + size


def resize_center_crop(
    image: Image.Image, size: int, crop_fraction: float = CROP_FRACTION
) -> Image.Image:
    """Resize the shorter side to ``resize_side(size)``, then the centre ``size`` x ``size``."""
    new_size = resized_size(*image.size, resize_side(size, crop_fraction))
    if new_size != image.size:
        image = image.resize(new_size, Image.Resampling.BILINEAR)
    return image.crop(center_crop_box(*new_size, size))


def crop_to_array(image: Image.Image, size: int) -> np.ndarray:
    """One RGB image -> its ``(size, size, 3)`` uint8 crop, the only thing a batch keeps."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # convert() always copies
    return np.asarray(resize_center_crop(rgb, size))


def normalize(pixels: np.ndarray) -> torch.Tensor:
    """``(N, H, W, 3)`` uint8 -> normalised float32 ``(N, 3, H, W)`` in channels_last layout,
    with ToTensor's and Normalize's float32 operations in their order."""
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # NHWC memory = channels_last
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return batch.float().div(255).sub(mean).div(std)


def images_to_batch(images: Sequence[Image.Image], size: int = 224) -> torch.Tensor:
    """RGB images -> the normalised ``(N, 3, size, size)`` batch (training, benchmarks)."""
    return normalize(np.stack([crop_to_array(image, size) for image in images]))

"""Image preprocessing shared by training, the TorchServe handler and the benchmarks.

Resize the shorter side to ``size / crop_fraction`` (256 for 224), centre-crop ``size``, and
normalise with ImageNet statistics: per-image work stays in Pillow's C code, the normalisation
is one vectorised op over the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_FRACTION = 0.875


def resize_center_crop(
    image: Image.Image, size: int, crop_fraction: float = CROP_FRACTION
) -> Image.Image:
    resize = round(size / crop_fraction)
    width, height = image.size
    scale = resize / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def images_to_batch(images: Sequence[Image.Image], size: int = 224) -> torch.Tensor:
    """RGB images -> normalised float32 ``(N, 3, size, size)`` tensor in channels_last layout."""
    pixels = np.stack([np.asarray(resize_center_crop(im.convert("RGB"), size)) for im in images])
    batch = torch.from_numpy(pixels).permute(0, 3, 1, 2)  # NHWC memory = channels_last
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return (batch.float() - mean) / std

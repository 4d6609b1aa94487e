from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from model_store.worker.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    images_to_batch,
    resize_center_crop,
)


@pytest.mark.parametrize("size", [(640, 480), (224, 224), (100, 300), (7, 9)])
def test_resize_center_crop_gives_square(size):
    assert resize_center_crop(Image.new("RGB", size), 224).size == (224, 224)


def test_batch_is_normalised_channels_last():
    colour = (255, 128, 0)
    batch = images_to_batch(
        [Image.new("RGB", (300, 200), colour), Image.new("L", (50, 50), 0)], 224
    )
    assert batch.shape == (2, 3, 224, 224) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    expected = [
        (c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD, strict=True)
    ]
    torch.testing.assert_close(batch[0, :, 100, 100], torch.tensor(expected), rtol=1e-5, atol=1e-5)
    assert np.allclose(batch[1, 0, 0, 0].item(), -IMAGENET_MEAN[0] / IMAGENET_STD[0], atol=1e-5)


def test_centre_crop_keeps_the_centre():
    image = Image.new("RGB", (400, 200), (0, 0, 0))
    image.paste((255, 255, 255), (150, 50, 250, 150))  # white square in the middle
    crop = np.asarray(resize_center_crop(image, 224))
    assert crop[112, 112].tolist() == [255, 255, 255]
    assert crop[112, 0].tolist() == [0, 0, 0]

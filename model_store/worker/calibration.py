"""The images a low-precision build calibrates on and is checked on, decoded as the worker decodes
uploads (header checks, EXIF orientation, RGB, resize and crop, normalisation), so the ranges and
the fidelity are those of what will be served.

From ``--calibration DIR`` (the user's own images: every fourth, in name order, is held out for
the fidelity gate and never calibrated on), or else from the synthetic shapes
(``synthetic.py``), said so: their accuracy says nothing of real photos.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from contract.images import ImageError, ImageLimits, validate

from ..demo.synthetic import encode, make_images
from .images import load_upright_rgb
from .transforms import crop_to_array, normalize

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
HELD_OUT_EVERY = 4
MIN_HELD_OUT = 8
SYNTHETIC_CALIBRATION, SYNTHETIC_HELD_OUT = 64, 64
SYNTHETIC_SEEDS = (20261205, 20261206)
SYNTHETIC_SIZE = (320, 240)


@dataclass(frozen=True)
class CalibrationSet:
    source: str
    real: bool
    """False for the synthetic shapes: the gate then measured nothing of real data."""
    calibration: torch.Tensor
    held_out: torch.Tensor

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "real_data": self.real,
            "calibration_images": len(self.calibration),
            "held_out_images": len(self.held_out),
        }


def preprocess(files: list[bytes], input_size: int) -> torch.Tensor:
    """Encoded images -> the normalised batch the model takes, exactly as served."""
    crops = [
        crop_to_array(load_upright_rgb(validate(data, ImageLimits())), input_size) for data in files
    ]
    return normalize(np.stack(crops)).contiguous()


def calibration_set(directory: Path | None, input_size: int) -> CalibrationSet:
    if directory is None:
        return _synthetic(input_size)
    paths = sorted(p for p in directory.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    files = []
    for path in paths:
        try:
            validate(data := path.read_bytes(), ImageLimits())
        except ImageError as exc:
            raise ValueError(f"calibration image {path}: {exc}") from None
        files.append(data)
    held_out = files[HELD_OUT_EVERY - 1 :: HELD_OUT_EVERY]
    if len(held_out) < MIN_HELD_OUT:
        raise ValueError(
            f"{directory} holds {len(files)} images: need at least "
            f"{HELD_OUT_EVERY * MIN_HELD_OUT} (every {HELD_OUT_EVERY}th is held out)"
        )
    calibrate = [f for i, f in enumerate(files) if (i + 1) % HELD_OUT_EVERY]
    return CalibrationSet(
        f"{directory} ({len(files)} images)",
        True,
        preprocess(calibrate, input_size),
        preprocess(held_out, input_size),
    )


def _synthetic(input_size: int) -> CalibrationSet:
    def images(count: int, seed: int) -> torch.Tensor:
        drawn, _ = make_images(count, seed=seed, size=SYNTHETIC_SIZE)
        return preprocess([encode(image, "JPEG", quality=90) for image in drawn], input_size)

    calibrate_seed, held_out_seed = SYNTHETIC_SEEDS
    return CalibrationSet(
        "synthetic shapes (model_store.demo.synthetic, "
        f"seeds {calibrate_seed} and {held_out_seed}); accuracy not measured on real data",
        False,
        images(SYNTHETIC_CALIBRATION, calibrate_seed),
        images(SYNTHETIC_HELD_OUT, held_out_seed),
    )

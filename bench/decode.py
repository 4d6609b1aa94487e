"""What the ``fast_decode`` archive option buys and what it costs.

``python -m bench.decode [--images 24] [--rounds 5] [--size 4032x3024]``

Phone-sized JPEGs (synthetic shapes on noise, the tiny model's classes, drawn at full size) go
through the worker's per-image path (validate, decode, EXIF, crop) with the exact full decode
and with libjpeg's reduced-scale ``draft`` decode, in interleaved rounds: ms per image for each.
Then a tiny model trained here scores both versions: how far the input crops, the logits and the
probabilities move (max and mean absolute difference) and how often the top-1 class changes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from contract.images import ImageLimits, validate
from model_store.demo.synthetic import CLASS_NAMES, encode, make_images
from model_store.demo.tiny import TINY_INPUT_SIZE, train_tiny
from model_store.worker.images import load_upright_rgb
from model_store.worker.transforms import crop_to_array, normalize, resize_side
from perf.common import report


def size_arg(value: str) -> tuple[int, int]:
    width, _, height = value.partition("x")
    return int(width), int(height)


def crops(uploads: list[bytes], input_size: int, draft: bool) -> tuple[np.ndarray, float]:
    """The worker's per-image path for every upload; its crops and seconds per image."""
    limits = ImageLimits()
    draft_side = resize_side(input_size) if draft else 0
    started = time.perf_counter()
    arrays = [
        crop_to_array(load_upright_rgb(validate(data, limits), draft_side), input_size)
        for data in uploads
    ]
    return np.stack(arrays), (time.perf_counter() - started) / len(uploads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decode", description=__doc__)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=size_arg, default=(4032, 3024), help="WIDTHxHEIGHT")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    print(f"encoding {args.images} JPEGs of {args.size[0]}x{args.size[1]} ...", flush=True)
    images, labels = make_images(args.images, seed=11, size=args.size)
    uploads = [encode(image, "JPEG", quality=args.quality) for image in images]
    print("training the tiny model that scores them ...", flush=True)
    model = train_tiny("eca_resnet50")

    rows = []
    timings: dict[bool, list[float]] = {False: [], True: []}
    batches: dict[bool, np.ndarray] = {}
    for round_ in range(args.rounds):
        for draft in (False, True) if round_ % 2 == 0 else (True, False):
            batches[draft], seconds = crops(uploads, TINY_INPUT_SIZE, draft)
            timings[draft].append(seconds)
        print(f"round {round_ + 1}/{args.rounds} done", flush=True)
    with torch.no_grad():
        logits = {d: model(normalize(b)) for d, b in batches.items()}
    probabilities = {d: out.softmax(dim=1) for d, out in logits.items()}
    shift = (probabilities[True] - probabilities[False]).abs()
    logit_shift = (logits[True] - logits[False]).abs()
    pixel_shift = np.abs(batches[True].astype(np.int16) - batches[False].astype(np.int16))
    top1 = {d: p.argmax(dim=1) for d, p in probabilities.items()}
    truth = torch.tensor(labels)
    for draft in (False, True):
        ms = statistics.median(timings[draft]) * 1000
        rows.append(
            {
                "decode": "fast (draft)" if draft else "full (default)",
                "ms_per_image": ms,
                "speedup": statistics.median(timings[False]) / statistics.median(timings[draft]),
                "accuracy": float((top1[draft] == truth).float().mean()),
                "mean_abs_pixel_shift": float(pixel_shift.mean()) if draft else 0.0,
                "max_abs_logit_shift": float(logit_shift.max()) if draft else 0.0,
                "max_abs_prob_shift": float(shift.max()) if draft else 0.0,
                "mean_abs_prob_shift": float(shift.mean()) if draft else 0.0,
                "top1_changed": int((top1[True] != top1[False]).sum()) if draft else 0,
            }
        )
    print(f"classes: {', '.join(CLASS_NAMES)}; {args.images} images, median of {args.rounds}")
    report(
        "decode",
        args,
        rows,
        [
            ("decode", "decode"),
            ("ms/image", "ms_per_image"),
            ("speed-up", "speedup"),
            ("top-1 accuracy", "accuracy"),
            ("mean |Δpixel| (0-255)", "mean_abs_pixel_shift"),
            ("max |Δlogit|", "max_abs_logit_shift"),
            ("max |Δp|", "max_abs_prob_shift"),
            ("mean |Δp|", "mean_abs_prob_shift"),
            ("top-1 changed", "top1_changed"),
        ],
    )


if __name__ == "__main__":
    main()

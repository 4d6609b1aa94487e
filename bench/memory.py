"""Worker memory ceiling: peak RSS of the classifier for the worst batch the limits allow.

``python -m bench.memory [--model eca_resnet50] [--max-pixels 40000000] [--batch 8] [--tiny]``

Each case runs in a fresh process (the kernel's ``VmHWM`` is a per-process high-water mark): the
classifier is loaded and warmed up on the same number of small images (``baseline``), then it
classifies ``batch`` copies of the worst image of that kind at ``max_pixels`` (``peak``). Images
are decoded one at a time and cut down to their crop at once, and a batch may only spend
``max_batch_pixels`` decoding, so ``peak - baseline`` is bounded by one image's decode, whatever
the batch size. The cases are the Pillow modes that cost the most bytes per pixel on the way to
RGB: a palette PNG with transparency (a few KB on the wire), RGBA, 16-bit grey, CMYK JPEG.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from contract.images import ImageLimits
from contract.lists import comma_separated
from model_store.demo.synthetic import encode
from perf.common import report

CASES = ("palette PNG + transparency", "RGBA PNG", "16-bit grey PNG", "RGB JPEG", "CMYK JPEG")


def worst_image(case: str, side: int) -> bytes:
    """A square image of ``side`` pixels a side, in the mode ``case`` names."""
    size = (side, side)
    if case == "palette PNG + transparency":
        return encode(Image.new("P", size, 1), "PNG", transparency=0)
    if case == "RGBA PNG":
        return encode(Image.new("RGBA", size, (10, 200, 30, 128)), "PNG")
    if case == "16-bit grey PNG":
        return encode(Image.new("I;16", size, 40000), "PNG")
    if case == "RGB JPEG":
        return encode(Image.new("RGB", size, (10, 200, 30)), "JPEG")
    if case == "CMYK JPEG":
        return encode(Image.new("CMYK", size, (10, 200, 30, 0)), "JPEG")
    raise ValueError(f"unknown case {case!r}; known: {', '.join(CASES)}")


def high_water_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def run_case(
    weights: str, model: str, case: str, max_pixels: int, batch_pixels: int, batch: int
) -> dict[str, Any]:
    """In the measuring process: load, warm up, then classify the worst batch."""
    from model_store.worker.classifier import ImageClassifier
    from model_store.worker.config import ClassifierConfig

    config = ClassifierConfig(
        model,
        Path(weights),
        compile=False,
        max_pixels=max_pixels,
        max_batch_pixels=batch_pixels,
    )
    classifier = ImageClassifier.load(config)
    small = encode(Image.new("RGB", (300, 200), (90, 90, 90)), "JPEG")
    classifier.classify([small] * batch)
    baseline = high_water_kib()
    worst = worst_image(case, math.isqrt(max_pixels))
    results = classifier.classify([worst] * batch)
    peak = high_water_kib()
    return {
        "case": case,
        "upload_kib": round(len(worst) / 1024, 1),
        "decoded": sum("predictions" in r for r in results),
        "refused_over_budget": sum(
            r.get("error", {}).get("code") == "batch_too_large" for r in results
        ),
        "baseline_mib": baseline / 1024,
        "peak_mib": peak / 1024,
        "image_mib": (peak - baseline) / 1024,
        "bytes_per_pixel": (peak - baseline) * 1024 / max_pixels,
    }


def measure(
    case: str, *, model: str, weights: Path, limits: ImageLimits, batch: int
) -> dict[str, Any]:
    """``run_case`` in a fresh interpreter; its result."""
    code = (
        "import json, sys; from bench.memory import run_case; "
        "print(json.dumps(run_case(*sys.argv[1:4], *map(int, sys.argv[4:]))))"
    )
    args = [weights, model, case, limits.max_pixels, limits.max_batch_pixels, batch]
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{case}: measuring process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def random_weights(model: str, directory: Path, tiny: bool = False) -> Path:
    """Seeded random weights: the full model, or its tiny configuration (whose own activations
    are small, so the images' share of the peak shows)."""
    import torch

    from model_store.demo.synthetic import CLASS_NAMES
    from model_store.demo.tiny import save_tiny
    from model_store.zoo.checkpoint import save_checkpoint
    from model_store.zoo.models import create_model, tiny_arch

    torch.manual_seed(0)
    path = directory / f"{model}.pt"
    if tiny:
        return save_tiny(
            create_model(model, num_classes=len(CLASS_NAMES), **tiny_arch(model)), path
        )
    return save_checkpoint(create_model(model), path, weights="random")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--model", default="eca_resnet50")
    parser.add_argument("--max-pixels", type=int, default=ImageLimits.max_pixels)
    parser.add_argument("--max-batch-pixels", type=int, default=ImageLimits.max_batch_pixels)
    parser.add_argument("--batch", type=int, default=8, help="images sent in one batch")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument(
        "--tiny", action="store_true", help="the tiny model: isolates the images' bytes/pixel"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    limits = ImageLimits(args.max_pixels, ImageLimits.max_aspect_ratio, args.max_batch_pixels)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = random_weights(args.model, Path(tmp), tiny=args.tiny)
        for index, case in enumerate(comma_separated(args.cases), 1):
            print(f"[{index}] {case}: {args.batch} x {args.max_pixels:,} pixels", flush=True)
            rows.append(
                measure(case, model=args.model, weights=weights, limits=limits, batch=args.batch)
            )
    report(
        "memory",
        args,
        rows,
        [
            ("image kind", "case"),
            ("upload KiB", "upload_kib"),
            ("decoded", "decoded"),
            ("refused (budget)", "refused_over_budget"),
            ("baseline RSS MiB", "baseline_mib"),
            ("peak RSS MiB", "peak_mib"),
            ("images' share MiB", "image_mib"),
            ("bytes/pixel", "bytes_per_pixel"),
        ],
    )


if __name__ == "__main__":
    main()

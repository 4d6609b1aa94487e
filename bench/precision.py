"""Fidelity of the low precisions on trained models: what the build's gate sees, and accuracy.

    python -m bench.precision                        # eca_resnet50 and resnet50, ~15 min here
    python -m bench.precision --models eca_resnet50 --full-steps 0   # tiny models only

For each model, three sets of weights, each built for every (runtime, precision) candidate by
the archive's own code (``model_store.worker.archive.build_candidate``), with the build's
default calibration (synthetic shapes) and measured against the float32 eager model on held-out
images as the gate measures (``model_store.zoo.fidelity``):

- ``tiny``: the tiny configuration trained on the synthetic shapes (the tests' model);
- ``full``: the full ResNet-50 (25 M parameters) trained on the same shapes at 64 px for
  ``--full-steps``: trained weights and real BN statistics, though a 4-class task, not ImageNet;
- ``random``: the full ResNet-50 at 224 px with its 1000-class head, seeded random weights (what
  an archive without a checkpoint holds).

Trained models also get their accuracy on a labelled synthetic test set per precision. Prints a
table and writes JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from model_store.demo.synthetic import encode, make_images
from model_store.demo.tiny import TINY_INPUT_SIZE, train_tiny
from model_store.worker.archive import build_candidate, candidate_name
from model_store.worker.calibration import calibration_set, preprocess
from model_store.zoo.fidelity import FidelityGate, logits_of, measure
from model_store.zoo.models import create_model
from model_store.zoo.optimize import optimize_for_inference
from model_store.zoo.precision import FP32, PRECISIONS
from model_store.zoo.registry import parse_model_names
from model_store.zoo.runtimes import RUNTIMES
from perf.common import comma_list, environment, markdown_table, progress, write_results

BUCKETS = (1, 8)
TEST_IMAGES = 64


def weights(name: str, variant: str, full_steps: int) -> tuple[torch.nn.Module, int]:
    """The model of ``variant`` and its input size."""
    if variant == "tiny":
        return train_tiny(name), TINY_INPUT_SIZE
    if variant == "full":
        return train_tiny(name, steps=full_steps, arch={}), TINY_INPUT_SIZE
    torch.manual_seed(0)
    return create_model(name).eval(), 224


def labelled_test_set(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = make_images(TEST_IMAGES, seed=777, size=(200, 150))
    encoded = [encode(image, "JPEG", quality=90) for image in images]
    return preprocess(encoded, size), torch.tensor(labels)


def evaluate(name: str, variant: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    progress(f"{name} ({variant}): preparing the model")
    eager, size = weights(name, variant, args.full_steps)
    optimized = optimize_for_inference(eager, compile=False).model
    images = calibration_set(None, size)
    reference = logits_of(lambda _: eager, images.held_out, BUCKETS[-1])
    test_inputs, test_labels = labelled_test_set(size) if variant != "random" else (None, None)
    rows = []
    for runtime in args.runtimes:
        for precision in args.precisions:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="bench-precision-") as tmp:
                prebuilt = build_candidate(
                    runtime, precision, optimized, images, size, BUCKETS, Path(tmp),
                    progress=lambda _: None,
                )  # fmt: skip
                run = prebuilt.runners.__getitem__
                measured = measure(logits_of(run, images.held_out, BUCKETS[-1]), reference)
                row: dict[str, Any] = {
                    "model": name,
                    "weights": variant,
                    "candidate": candidate_name(runtime, precision),
                    **measured,
                    "passes_gate": precision == FP32 or not args.gate.failures(measured),
                    "build_s": round(time.perf_counter() - started, 1),
                }
                if test_inputs is not None:
                    served = logits_of(run, test_inputs, BUCKETS[-1]).argmax(1)
                    row["accuracy"] = (served == test_labels).float().mean().item()
            progress(
                f"  {row['candidate']}: top-1 agreement {row['top1_agreement']:.4f}, max "
                f"probability shift {row['max_probability_shift']:.4f}"
                + (f", accuracy {row['accuracy']:.3f}" if "accuracy" in row else "")
            )
            rows.append(row)
    if test_inputs is not None:
        eager_accuracy = logits_of(lambda _: eager, test_inputs, 8).argmax(1) == test_labels
        rows.append(
            {"model": name, "weights": variant, "candidate": "eager (fp32 reference)",
             "accuracy": eager_accuracy.float().mean().item()}
        )  # fmt: skip
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=parse_model_names, default="eca_resnet50,resnet50")
    parser.add_argument("--runtimes", type=comma_list(), default=",".join(RUNTIMES))
    parser.add_argument("--precisions", type=comma_list(), default=",".join(PRECISIONS))
    parser.add_argument(
        "--full-steps", type=int, default=150, help="training steps of the full-size model; 0 skips"
    )
    parser.add_argument("--no-random", action="store_true", help="skip the random-weight model")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.gate = FidelityGate()
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    variants = [
        "tiny",
        *(["full"] if args.full_steps else []),
        *([] if args.no_random else ["random"]),
    ]
    rows = [row for name in args.models for v in variants for row in evaluate(name, v, args)]
    columns = (
        "model", "weights", "candidate", "top1_agreement", "top5_overlap",
        "max_probability_shift", "mean_probability_shift", "max_abs_logit_error", "accuracy",
        "passes_gate",
    )  # fmt: skip
    print(markdown_table(list(columns), [[row.get(c) for c in columns] for row in rows]))
    payload = {
        "benchmark": "precision",
        "environment": environment("cpu"),
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "gate")},
        "gate": asdict(args.gate),
        "results": rows,
    }
    path = write_results("precision", payload, args.out)
    print(f"\nJSON: {path}")
    return payload


if __name__ == "__main__":
    main()

"""How close a low-precision runtime's answers are to the float32 eager model's, and the gate an
archive must pass to be built in that precision.

Measured on held-out images (never the calibration ones), per image, against the eager model:
whether top-1 agrees, how much of the top-5 is shared, the largest shift of any class's
probability, and the largest logit difference. The gate looks at the aggregate a user feels:
the share of images whose top-1 answer changes, the mean top-5 overlap, and the largest
probability shift of any class on any image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FidelityGate:
    """Thresholds a low-precision archive must meet (defaults: ``bench/README.md`` shows the
    values bf16 and int8 reach on trained models, and what random weights cannot show)."""

    min_top1_agreement: float = 0.99
    """Share of held-out images whose top-1 class is the eager model's."""
    min_top5_overlap: float = 0.95
    """Mean share of the eager top-5 found in the served top-5 (top-k for fewer classes)."""
    max_probability_shift: float = 0.02
    """Largest |p - p_eager| of any class on any held-out image."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")

    def failures(self, measured: dict[str, float]) -> list[str]:
        """What ``measured`` misses, in words (empty: it passes)."""
        failed = []
        if not measured["top1_agreement"] >= self.min_top1_agreement:  # NaN fails
            failed.append(
                f"top-1 agreement {measured['top1_agreement']:.4f} < {self.min_top1_agreement}"
            )
        if not measured["top5_overlap"] >= self.min_top5_overlap:
            failed.append(f"top-5 overlap {measured['top5_overlap']:.4f} < {self.min_top5_overlap}")
        if not measured["max_probability_shift"] <= self.max_probability_shift:
            failed.append(
                f"max probability shift {measured['max_probability_shift']:.4f} > "
                f"{self.max_probability_shift}"
            )
        return failed


class FidelityFailed(RuntimeError):
    """A low-precision runtime's answers are too far from the float32 eager model's."""


def measure(served: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    """Fidelity of ``served`` logits to ``reference`` logits (both [images, classes])."""
    served, reference = served.float(), reference.float()
    k = min(5, reference.shape[1])
    top_served, top_reference = served.topk(k).indices, reference.topk(k).indices
    overlap = (top_served[:, :, None] == top_reference[:, None, :]).any(2).float().mean(1)
    shift = (served.softmax(1) - reference.softmax(1)).abs().amax(1)
    return {
        "images": float(len(reference)),
        "top1_agreement": (top_served[:, 0] == top_reference[:, 0]).float().mean().item(),
        "top5_overlap": overlap.mean().item(),
        "max_probability_shift": shift.max().item(),
        "mean_probability_shift": shift.mean().item(),
        "max_abs_logit_error": (served - reference).abs().max().item(),
    }


def logits_of(run: Callable[[int], Runner], images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``images`` through ``run(batch)`` (one runner per batch size), in batches of
    ``batch_size``; a last short batch is padded to the full size, as the worker pads."""
    outputs = []
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            n = len(chunk)
            if n < batch_size:
                chunk = torch.cat([chunk, chunk.new_zeros(batch_size - n, *chunk.shape[1:])])
            batch = chunk.contiguous(memory_format=torch.channels_last)
            outputs.append(run(batch_size)(batch).float()[:n])
    return torch.cat(outputs)

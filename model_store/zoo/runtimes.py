"""The runtimes an archive can serve with, and how one is checked and chosen when it is built.

``inductor`` is the product's promise (``torch.compile``; AOTInductor packages in the archive),
``openvino`` an OpenVINO IR converted from the same optimised model, and ``auto`` builds both on
the machine class that will serve, measures them side by side and keeps the faster. Whatever
serves is first compared with the eager model on fresh inputs (``MAX_LOGIT_ERROR``).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .precision import AUTO, FP32

log = logging.getLogger(__name__)

RUNTIMES = ("inductor", "openvino")
RUNTIME_CHOICES = (*RUNTIMES, AUTO)
DEFAULT_RUNTIME = "inductor"
MAX_LOGIT_ERROR = 1e-3
"""Largest absolute logit difference from the eager model that a runtime may serve with."""

Runner = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Prebuilt:
    """Runners made when the archive was built, one per batch size, the name the worker
    reports for them (``aot`` for AOTInductor packages, ``openvino``) and their precision
    (``model_store.zoo.precision``)."""

    runtime: str
    runners: Mapping[int, Runner]
    precision: str = FP32


class RuntimeCheckFailed(RuntimeError):
    """A runtime's answers differ from the eager model's by more than ``MAX_LOGIT_ERROR``."""


def fresh_inputs(batch_size: int, input_size: int, seed: int) -> torch.Tensor:
    """Normalised-pixel-like inputs no compiler saw (not the zeros of export or warm-up)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, 3, input_size, input_size, generator=generator).contiguous(
        memory_format=torch.channels_last
    )


def max_logit_error(
    prebuilt: Prebuilt, eager: nn.Module, input_size: int, *, seed: int = 20261124
) -> float:
    """The largest |logit - eager logit| over every batch size; raises above the limit."""
    errors = {}
    with torch.inference_mode():
        for batch_size, run in sorted(prebuilt.runners.items()):
            x = fresh_inputs(batch_size, input_size, seed + batch_size)
            errors[batch_size] = (run(x.clone()).float() - eager(x).float()).abs().max().item()
    if failed := {b: e for b, e in errors.items() if not e <= MAX_LOGIT_ERROR}:  # NaN fails
        raise RuntimeCheckFailed(
            f"{prebuilt.runtime}: max abs logit error against the eager model per batch size "
            f"{failed}, more than the {MAX_LOGIT_ERROR:.0e} allowed"
        )
    return max(errors.values())


def images_per_second(
    candidates: Mapping[str, Prebuilt],
    input_size: int,
    *,
    rounds: int = 5,
    progress: Callable[[str], None] = log.info,
) -> dict[str, dict[str, float]]:
    """img/s of each candidate per batch size: median over ``rounds`` interleaved rounds
    (A, B, A, B ...), so a noisy shared CPU drifts under every candidate alike."""
    batch_sizes = sorted(set.intersection(*(set(p.runners) for p in candidates.values())))
    result: dict[str, dict[str, float]] = {name: {} for name in candidates}
    with torch.inference_mode():
        for batch_size in batch_sizes:
            x = fresh_inputs(batch_size, input_size, seed=batch_size)
            seconds: dict[str, list[float]] = {name: [] for name in candidates}
            for prebuilt in candidates.values():  # untimed: first-call costs
                prebuilt.runners[batch_size](x.clone())
            for _ in range(rounds):
                for name, prebuilt in candidates.items():
                    batch = x.clone()
                    started = time.perf_counter()
                    prebuilt.runners[batch_size](batch)
                    seconds[name].append(time.perf_counter() - started)
            for name in candidates:
                result[name][str(batch_size)] = round(
                    batch_size / statistics.median(seconds[name]), 2
                )
            progress(
                f"  batch {batch_size}: "
                + ", ".join(f"{n} {v[str(batch_size)]} img/s" for n, v in result.items())
            )
    return result


def fastest(measured: Mapping[str, Mapping[str, float]]) -> str:
    """The runtime with the highest geometric mean img/s over the batch sizes: each served
    batch size counts alike, whatever its absolute speed."""

    return max(measured, key=lambda name: statistics.geometric_mean(measured[name].values()))

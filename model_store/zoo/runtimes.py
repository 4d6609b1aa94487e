"""The runtimes an archive can serve with: a plug-in each (one module implementing ``Runtime``,
one line in ``RUNTIMES``), and how one is checked and chosen when an archive is built.

``inductor`` is the product's promise (``torch.compile``; AOTInductor packages in the archive),
``openvino`` an OpenVINO IR converted from the same optimised model, and ``auto`` builds every
registered one on the machine class that will serve, measures them side by side and keeps the
fastest. Whatever serves is first compared with the eager model on fresh inputs
(``MAX_LOGIT_ERROR``) or, in a low precision, by the fidelity gate.
"""

from __future__ import annotations

import logging
import statistics
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from .precision import AUTO, FP32, PRECISIONS
from .registry import plugin_class

log = logging.getLogger(__name__)

RUNTIMES: dict[str, str] = {
    "inductor": "model_store.zoo.aot:AotInductor",
    "openvino": "model_store.zoo.openvino_ir:OpenVino",
}
"""Runtime name -> its ``Runtime`` class as ``module:Class``, imported on first use."""
RUNTIME_CHOICES = (*RUNTIMES, AUTO)
DEFAULT_RUNTIME = "inductor"
"""The one that can also compile just in time, when no prebuilt model can serve here."""
MAX_LOGIT_ERROR = 1e-3
"""Largest absolute logit difference from the eager model that a runtime may serve with."""

Runner = Callable[[torch.Tensor], torch.Tensor]
Progress = Callable[[str], None]

PACKED_AT_LOAD, PACKED_AT_BUILD, NOT_PACKED = "at_load", "at_build", "none"
"""When the weights were packed into the layouts the CPU's kernels read (oneDNN's blocked
layouts): by the serving process, for its CPU and thread count (``at_load``); when the archive
was built, for the builder's (``at_build``: slower where those differ); or not at all (eager).
What a worker reports as its ``weight_packing``."""


class PrebuiltUnusable(RuntimeError):
    """Prebuilt models that cannot serve here (another machine class, a missing package): the
    worker warns and compiles just in time instead."""


@dataclass(frozen=True)
class BuildJob:
    """What a runtime builds: ``model`` (optimised: BN folded, eval, channels_last, on CPU) in
    ``precision``, for each of ``batch_sizes`` at ``input_size``, into ``directory``;
    ``calibration``: preprocessed images for a low precision's activation ranges (empty for
    fp32)."""

    model: nn.Module
    precision: str
    calibration: torch.Tensor
    batch_sizes: Sequence[int]
    input_size: int
    directory: Path
    progress: Progress


class Runtime(ABC):
    """What an archive builds ahead for the optimised model (BN folded, eval, channels_last,
    on CPU) and how a worker loads it: one runner per batch bucket, checked against the eager
    model by the builder (``max_logit_error``, the fidelity gate), measured for ``auto``."""

    reported_as: ClassVar[str]
    """What the worker reports as its runtime (``/v1/models``, ``gateway_model_runtime``)."""
    precisions: ClassVar[tuple[str, ...]] = PRECISIONS
    """The precisions it can build (``model_store.zoo.precision``)."""

    @abstractmethod
    def build(self, job: BuildJob) -> None:
        """Write what serves ``job.model`` in ``job.precision`` to ``job.directory``."""

    def weight_packing(self, directory: Path) -> str:
        """When what ``load`` makes from ``directory`` had its weights packed: by default at
        load (a runtime that compiles at load packs for the serving process)."""
        return PACKED_AT_LOAD

    @abstractmethod
    def load(
        self,
        directory: Path,
        batch_sizes: Sequence[int],
        input_size: int,
        precision: str,
        model: nn.Module,
    ) -> dict[int, Runner]:
        """One runner per batch size from ``directory``; ``PrebuiltUnusable`` says why not.
        ``model`` is the optimised float32 model the worker loaded: a runtime may make what it
        runs on from its weights instead of storing them again."""


def get_runtime(name: str) -> Runtime:
    """The runtime registered as ``name``."""
    try:
        return plugin_class(RUNTIMES[name], Runtime)()
    except KeyError:
        raise ValueError(
            f"unknown runtime {name!r}; choose one of: {', '.join(RUNTIMES)}"
        ) from None


def register_runtime(name: str, runtime: str) -> None:
    """Add a runtime at run time (a plug-in, a test): ``runtime`` is ``"module:Class"``."""
    if not name.isidentifier() or name == AUTO:
        raise ValueError(f"a runtime name is an identifier other than {AUTO!r}")
    RUNTIMES[name] = runtime


def unregister_runtime(name: str) -> None:
    del RUNTIMES[name]


@dataclass(frozen=True)
class Prebuilt:
    """Runners made when the archive was built, one per batch size, the name the worker
    reports for them (``Runtime.reported_as``), their precision and when their weights were
    packed (``PACKED_AT_LOAD``...)."""

    runtime: str
    runners: Mapping[int, Runner]
    precision: str = FP32
    weight_packing: str = PACKED_AT_LOAD


def load_prebuilt(
    name: str,
    directory: Path,
    batch_sizes: Sequence[int],
    input_size: int,
    model: nn.Module,
    precision: str = FP32,
) -> Prebuilt:
    """What an archive built for runtime ``name`` in ``precision``, loaded beside the
    optimised float32 ``model``."""
    runtime = get_runtime(name)
    runners = runtime.load(directory, batch_sizes, input_size, precision, model)
    return Prebuilt(runtime.reported_as, runners, precision, runtime.weight_packing(directory))


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

"""Ahead-of-time compiled models (AOTInductor): compiled once when the archive is built, loaded
in milliseconds by every worker start, with no compiler and no dynamo at serve time.

One package per batch bucket (the graphs are specialised per batch size, as the JIT path's
``dynamic=False`` ones are), and a manifest keyed by what the generated code depends on: torch's
version, the CPU architecture and its vector ISA. A package built for another machine class is
refused at load (``AotMismatch``); the worker then compiles just in time instead.
"""

from __future__ import annotations

import json
import logging
import platform
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .low_precision import lower
from .runtimes import BuildJob, PrebuiltUnusable, Runner, Runtime

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class AotMismatch(PrebuiltUnusable):
    """The packages cannot serve here: built for another machine class, or incomplete."""


def machine_key() -> dict[str, str]:
    """What AOTInductor's generated CPU code is specific to."""
    return {
        "torch": torch.__version__,
        "arch": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _package(directory: Path, batch_size: int) -> Path:
    return directory / f"batch_{batch_size}.pt2"


def compile_packages(
    model: nn.Module,
    batch_sizes: Sequence[int],
    input_size: int,
    directory: Path,
    progress: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Export ``model`` (already optimised, eval, channels_last, on CPU) once per batch size and
    compile each with inductor's CPU freezing (prepacked oneDNN weights), as the JIT path does.
    Freezing only happens with gradients off: export and compile both run under ``no_grad``."""
    directory.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for batch_size in batch_sizes:
        started = time.perf_counter()
        example = torch.zeros(batch_size, 3, input_size, input_size).contiguous(
            memory_format=torch.channels_last
        )
        with warnings.catch_warnings():
            # torch's own pickling of the export spec warns about its own deprecated API
            warnings.filterwarnings("ignore", "`isinstance.*LeafSpec", FutureWarning)
            with torch.no_grad():
                exported = torch.export.export(model, (example,))
                torch._inductor.aoti_compile_and_package(
                    exported,
                    package_path=str(_package(directory, batch_size)),
                    inductor_configs={"freezing": True},
                )
        seconds[str(batch_size)] = round(time.perf_counter() - started, 1)
        progress(f"  AOTInductor batch {batch_size}: {seconds[str(batch_size)]} s")
    manifest = {
        "machine": machine_key(),
        "batch_sizes": list(batch_sizes),
        "input_size": input_size,
        "compile_seconds": seconds,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_packages(
    directory: Path, batch_sizes: Sequence[int], input_size: int
) -> dict[int, Runner]:
    """One loaded runner per batch size; ``AotMismatch`` says why these packages cannot serve."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise AotMismatch(f"no readable AOT manifest in {directory}: {exc}") from None
    if (built := manifest.get("machine")) != (here := machine_key()):
        raise AotMismatch(f"packages built for {built}, this machine is {here}")
    if manifest.get("input_size") != input_size:
        raise AotMismatch(f"packages take {manifest.get('input_size')} px, the model {input_size}")
    if missing := sorted(set(batch_sizes) - set(manifest.get("batch_sizes", []))):
        raise AotMismatch(f"no package for batch sizes {missing}")
    return {b: torch._inductor.aoti_load_package(str(_package(directory, b))) for b in batch_sizes}


class AotInductor(Runtime):
    """The ``inductor`` runtime: the model lowered to its precision (bf16 wrapper, PT2E int8)
    and compiled by AOTInductor into one package per batch bucket."""

    reported_as = "aot"

    def build(self, job: BuildJob) -> None:
        job.progress(f"  AOTInductor ({job.precision}), one package per bucket")
        lowered = lower(job.model, job.precision, job.calibration, job.batch_sizes[-1])
        compile_packages(lowered, job.batch_sizes, job.input_size, job.directory, job.progress)

    def load(
        self, directory: Path, batch_sizes: Sequence[int], input_size: int, precision: str
    ) -> dict[int, Runner]:
        return load_packages(directory, batch_sizes, input_size)

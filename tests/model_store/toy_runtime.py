"""A runtime added as ``model_store.zoo.runtimes`` says (one module, one registry line): the
optimised model exported once per batch bucket with ``torch.export`` and run as that graph."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from model_store.zoo.precision import FP32
from model_store.zoo.runtimes import BuildJob, PrebuiltUnusable, Runner, Runtime


def _program(directory: Path, batch_size: int) -> Path:
    return directory / f"batch_{batch_size}.pt2"


class ExportedGraph(Runtime):
    reported_as = "exported"
    precisions = (FP32,)

    def build(self, job: BuildJob) -> None:
        job.directory.mkdir(parents=True, exist_ok=True)
        for batch_size in job.batch_sizes:
            job.progress(f"  exporting batch {batch_size}")
            example = torch.zeros(batch_size, 3, job.input_size, job.input_size)
            with torch.no_grad():
                exported = torch.export.export(job.model, (example,))
            torch.export.save(exported, _program(job.directory, batch_size))

    def load(
        self,
        directory: Path,
        batch_sizes: Sequence[int],
        input_size: int,
        precision: str,
        model: torch.nn.Module,
    ) -> dict[int, Runner]:
        if missing := [b for b in batch_sizes if not _program(directory, b).exists()]:
            raise PrebuiltUnusable(f"no exported graph for batch sizes {missing}")
        return {b: torch.export.load(_program(directory, b)).module() for b in batch_sizes}

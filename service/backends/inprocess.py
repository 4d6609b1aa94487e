"""The same classifier code TorchServe runs, inside the gateway process.

For machines without Java, for development, and as the in-process baseline of the benchmark.
It loads the very same ``.mar`` archives (weights + ``model-config.yaml``).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from model_store.worker.archive import load_archive
from model_store.worker.classifier import ImageClassifier
from model_store.worker.inputs import tensor_input
from model_store.worker.timing import Stopwatch

from ..inputs import Upload
from ..schemas import READY, EndpointStatus
from .base import (
    BackendTimeout,
    BatchResult,
    WorkerFacts,
    check_results,
    one_endpoint,
    serving_mismatch,
    with_timing,
)


class InProcessBackend:
    def __init__(
        self, models: list[str], archive_dir: Path, timeout_s: float, max_batch_size: int
    ) -> None:
        self.models = models
        self.archive_dir = archive_dir
        self.timeout_s = timeout_s
        self.max_batch_size = max_batch_size
        self._tmp = tempfile.TemporaryDirectory(prefix="gateway-inprocess-")
        self._classifiers: dict[str, ImageClassifier] = {}
        self._facts: dict[str, WorkerFacts] = {}
        self._locks = {m: asyncio.Lock() for m in models}
        self._errors: dict[str, str] = {}

    async def start(self) -> None:
        """Load (and compile, and warm up) every model before serving; a model whose warmed
        buckets are smaller than the gateway's batches stops the start with the reason."""
        for model in self.models:
            try:
                config = load_archive(
                    self.archive_dir / f"{model}.mar", Path(self._tmp.name) / model
                )
                classifier = await asyncio.to_thread(ImageClassifier.load, config)
                facts = WorkerFacts.model_validate(
                    classifier.info | {"compiled_graphs": classifier.compiled_graphs}
                )
                if mismatch := serving_mismatch(facts, self.max_batch_size):
                    raise ValueError(f"{model}: {mismatch}")
                self._classifiers[model] = classifier
                self._facts[model] = facts
            except Exception as exc:
                self._errors[model] = f"{type(exc).__name__}: {exc}"
                raise

    async def close(self) -> None:
        self._tmp.cleanup()

    async def classify(
        self, model: str, inputs: Sequence[Upload], top_k: int, probabilities: bool = False
    ) -> list[BatchResult]:
        """One batch at a time per model (torch already uses every core for one batch). A batch
        that outlives ``timeout_s`` answers 504; the model stays locked until its thread ends,
        so a late batch never runs beside the next one."""
        lock = self._locks[model]
        await lock.acquire()
        payloads = [tensor_input(i.data) if i.kind == "tensor" else i.data for i in inputs]
        stopwatch = Stopwatch()
        classify = partial(self._classifiers[model].classify, stopwatch=stopwatch)
        work = asyncio.ensure_future(asyncio.to_thread(classify, payloads, top_k, probabilities))
        work.add_done_callback(lambda _: lock.release())
        try:
            async with asyncio.timeout(self.timeout_s):
                results = await asyncio.shield(work)
        except TimeoutError:
            raise BackendTimeout(f"the model did not answer within {self.timeout_s:g} s") from None
        checked = with_timing(
            check_results(results, len(inputs), probabilities), stopwatch.timing()
        )
        if model in self._facts:
            self._facts[model] = self._facts[model].model_copy(
                update={"compiled_graphs": self._classifiers[model].compiled_graphs}
            )
        return checked

    def worker_facts(self) -> dict[str, WorkerFacts]:
        return dict(self._facts)

    async def readiness(self) -> dict[str, str]:
        return self._states()

    def endpoints(self) -> dict[str, list[EndpointStatus]]:
        return one_endpoint("inprocess", self._states())

    def ready_workers(self, model: str) -> int:
        return int(model in self._classifiers)

    def _states(self) -> dict[str, str]:
        return {
            m: READY if m in self._classifiers else self._errors.get(m, "loading")
            for m in self.models
        }

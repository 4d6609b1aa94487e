"""Per-model batchers in front of the backend: images in, per-image results out.

A request with several images submits each image to its model's batcher (batching is per image,
so a 5-image upload and three 1-image uploads can share one backend call). The whole request is
admitted or refused as one: it never sits half-queued. Batches are bounded in images and in
decoded pixels, the same pixel budget the worker enforces.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

from .backends.base import Backend, BackendError, BatchResult, InputFailure, WorkerResult
from .batcher import Batcher, BatchInfo, DeadlineUnmeetable
from .cost_model import BatchCostModel
from .inputs import Upload
from .metrics import GatewayMetrics
from .settings import GatewaySettings


@dataclass(frozen=True)
class ImageJob:
    upload: Upload
    top_k: int
    probabilities: bool = False


def own_answer(result: BatchResult, job: ImageJob) -> BatchResult:
    """A batch's result for one job: trimmed to its own ``top_k``, probabilities if it asked
    (the batch asked at the largest ``top_k``, and for probabilities if any job did)."""
    if isinstance(result, InputFailure):
        return result
    return WorkerResult(
        predictions=result.predictions[: job.top_k],
        probabilities=result.probabilities if job.probabilities else None,
        timing=result.timing,
    )


def decoding_s(results: Sequence[BatchResult]) -> float | None:
    """How long the worker decoded the batch, as its answer says (``None`` when it did not)."""
    for result in results:
        if isinstance(result, WorkerResult) and result.timing is not None:
            return result.timing.decode_ms / 1000
    return None


class Dispatcher:
    def __init__(
        self, backend: Backend, settings: GatewaySettings, metrics: GatewayMetrics
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.max_concurrent_batches = settings.max_concurrent_batches
        self.costs = {model: BatchCostModel() for model in settings.models}
        self._recovering: set[str] = set()  # models whose last batch failed
        self.batchers: dict[str, Batcher[ImageJob, BatchResult]] = {}
        for model in settings.models:
            batcher = Batcher(
                partial(self._run_batch, model),
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_batch_delay_ms / 1000,
                max_queue=settings.queue_limit,
                max_concurrent_batches=partial(self._concurrency, model),
                cost=lambda job: job.upload.pixels,
                max_batch_cost=settings.max_batch_pixels,
                on_dequeue=metrics.queue_wait.labels(model).observe,
                deadline_aware=settings.batching == "deadline",
                estimate=self.costs[model].bound,
                sizes=partial(self._buckets, model),
                name=model,
            )
            self.batchers[model] = batcher
            metrics.queue_depth.labels(model).set_function(lambda b=batcher: b.depth)

    def _buckets(self, model: str) -> list[int]:
        """The batch sizes ``model``'s worker computes without padding (its warmed buckets, as
        it reported them; none known yet: batches are not cut)."""
        facts = self.backend.worker_facts().get(model)
        return facts.batch_buckets if facts is not None else []

    def _concurrency(self, model: str) -> int:
        """Batches of ``model`` in flight at once: ``max_concurrent_batches`` per ready worker
        over every endpoint (one while none is ready: its batch finds out, and its breaker
        decides)."""
        return self.max_concurrent_batches * max(1, self.backend.ready_workers(model))

    async def _run_batch(self, model: str, jobs: list[ImageJob]) -> list[BatchResult]:
        """One backend call at the batch's largest top_k (probabilities if any job asks); each
        image trimmed to what it asked for.
        Duration and size are observed only for batches the backend received; the cost model
        learns from the batches that succeeded, except the first after a failure (Karn's rule
        for round-trip times): it may have waited out a worker's restart, and one such outlier
        made the model refuse every request as unmeetable once the worker was back (the soak
        found it)."""
        pixels = sum(job.upload.pixels for job in jobs)
        if (predicted := self.costs[model].predict(len(jobs), pixels)) is not None:
            self.metrics.backend_predicted.labels(model).observe(predicted)
        started = time.perf_counter()
        try:
            results = await self.backend.classify(
                model,
                [job.upload for job in jobs],
                max(job.top_k for job in jobs),
                any(job.probabilities for job in jobs),
            )
        except BackendError as exc:
            self._recovering.add(model)
            if exc.reached:
                self._observe(model, started, len(jobs))
            raise
        seconds = self._observe(model, started, len(jobs))
        if model in self._recovering:
            self._recovering.discard(model)
        else:
            self.costs[model].observe(len(jobs), seconds, pixels, decoding_s(results))
        return [own_answer(result, job) for result, job in zip(results, jobs, strict=True)]

    def _observe(self, model: str, started: float, size: int) -> float:
        seconds = time.perf_counter() - started
        self.metrics.backend_duration.labels(model).observe(seconds)
        self.metrics.batch_size.labels(model).observe(size)
        return seconds

    async def classify(
        self,
        model: str,
        uploads: list[Upload],
        top_k: int,
        deadline: float,
        probabilities: bool = False,
    ) -> list[tuple[BatchResult, BatchInfo]]:
        """Raises ``QueueFull``, ``DeadlineUnmeetable``, ``TimeoutError`` (past ``deadline``, a
        ``time.perf_counter()``), or the backend's error for a failed batch; then the request's
        other images are withdrawn, so nobody computes answers nobody waits for."""
        try:
            futures = self.batchers[model].submit_many(
                [ImageJob(u, top_k, probabilities) for u in uploads], deadline
            )
        except DeadlineUnmeetable:
            self.metrics.deadline_refusals.labels(model).inc()
            raise
        try:
            async with asyncio.timeout_at(self._loop_time(deadline)):
                return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()

    @staticmethod
    def _loop_time(deadline: float) -> float:
        """A ``time.perf_counter()`` deadline on the event loop's clock."""
        return asyncio.get_running_loop().time() + deadline - time.perf_counter()

    async def stop(self) -> None:
        await asyncio.gather(*(b.stop() for b in self.batchers.values()))

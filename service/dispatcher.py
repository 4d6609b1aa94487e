"""Per-model batchers in front of the backend: images in, per-image results out.

A request with several images submits each image to its model's batcher (batching is per image,
so a 5-image upload and three 1-image uploads can share one backend call). The whole request is
admitted or refused as one: it never sits half-queued. Batches are bounded in images and in
decoded pixels, the same pixel budget the worker enforces.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from .backends.base import Backend, BackendError
from .batcher import Batcher, BatchInfo
from .metrics import GatewayMetrics
from .settings import GatewaySettings
from .uploads import Upload


@dataclass(frozen=True)
class ImageJob:
    upload: Upload
    top_k: int


class Dispatcher:
    def __init__(
        self, backend: Backend, settings: GatewaySettings, metrics: GatewayMetrics
    ) -> None:
        self.backend = backend
        self.metrics = metrics
        self.request_timeout_s = settings.request_timeout_s
        self.batchers: dict[str, Batcher[ImageJob, dict[str, Any]]] = {}
        for model in settings.models:
            batcher = Batcher(
                partial(self._run_batch, model),
                max_batch_size=settings.max_batch_size,
                max_wait_s=settings.max_batch_delay_ms / 1000,
                max_queue=settings.queue_limit,
                max_concurrent_batches=settings.max_concurrent_batches,
                cost=lambda job: job.upload.pixels,
                max_batch_cost=settings.max_batch_pixels,
                on_dequeue=metrics.queue_wait.labels(model).observe,
                name=model,
            )
            self.batchers[model] = batcher
            metrics.queue_depth.labels(model).set_function(lambda b=batcher: b.depth)

    async def _run_batch(self, model: str, jobs: list[ImageJob]) -> list[dict[str, Any]]:
        """One backend call at the batch's largest top_k; each image trimmed to its own.
        Duration and size are observed only for batches the backend received."""
        started = time.perf_counter()
        try:
            results = await self.backend.classify(
                model, [job.upload.data for job in jobs], max(job.top_k for job in jobs)
            )
        except BackendError as exc:
            if exc.reached:
                self._observe(model, started, len(jobs))
            raise
        self._observe(model, started, len(jobs))
        return [
            {"predictions": result["predictions"][: job.top_k]}
            if "predictions" in result
            else result
            for result, job in zip(results, jobs, strict=True)
        ]

    def _observe(self, model: str, started: float, size: int) -> None:
        self.metrics.backend_duration.labels(model).observe(time.perf_counter() - started)
        self.metrics.batch_size.labels(model).observe(size)

    async def classify(
        self, model: str, uploads: list[Upload], top_k: int
    ) -> list[tuple[dict[str, Any], BatchInfo]]:
        """Raises ``QueueFull``, ``TimeoutError``, or the backend's error for a failed batch;
        then the request's other images are withdrawn."""
        futures = self.batchers[model].submit_many([ImageJob(u, top_k) for u in uploads])
        try:
            async with asyncio.timeout(self.request_timeout_s):
                return list(await asyncio.gather(*futures))
        finally:
            for future in futures:
                future.cancel()

    async def stop(self) -> None:
        await asyncio.gather(*(b.stop() for b in self.batchers.values()))

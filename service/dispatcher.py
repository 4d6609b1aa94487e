"""Per-model batchers in front of the backend: images in, per-image results out.

A request with several images submits each image to its model's batcher (batching is per image,
so a 5-image upload and three 1-image uploads can share one backend call). The whole request is
admitted or refused as one: it never sits half-queued.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

from .backends.base import Backend
from .batcher import Batcher, BatchInfo, QueueFull
from .metrics import GatewayMetrics
from .settings import GatewaySettings


@dataclass(frozen=True)
class ImageJob:
    data: bytes
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
                name=model,
            )
            self.batchers[model] = batcher
            metrics.queue_depth.labels(model).set_function(lambda b=batcher: b.depth)

    async def _run_batch(self, model: str, jobs: list[ImageJob]) -> list[dict[str, Any]]:
        """One backend call at the batch's largest top_k; each image trimmed to its own."""
        started = time.perf_counter()
        try:
            results = await self.backend.classify(
                model, [job.data for job in jobs], max(job.top_k for job in jobs)
            )
        finally:
            self.metrics.backend_duration.labels(model).observe(time.perf_counter() - started)
            self.metrics.batch_size.labels(model).observe(len(jobs))
        return [
            {"predictions": result["predictions"][: job.top_k]}
            if "predictions" in result
            else result
            for result, job in zip(results, jobs, strict=True)
        ]

    async def classify(
        self, model: str, images: list[bytes], top_k: int
    ) -> list[tuple[dict[str, Any], BatchInfo]]:
        """Raises ``QueueFull``, ``TimeoutError``, or the backend's error for a failed batch."""
        batcher = self.batchers[model]
        if batcher.depth + len(images) > batcher.max_queue:
            raise QueueFull(f"{model}: {batcher.depth} images queued, limit {batcher.max_queue}")
        tasks = [asyncio.create_task(batcher.submit(ImageJob(data, top_k))) for data in images]
        try:
            async with asyncio.timeout(self.request_timeout_s):
                answers = await asyncio.gather(*tasks)
        finally:
            for task in tasks:  # on timeout or failure: the other images are withdrawn
                task.cancel()
        for _, info in answers:
            self.metrics.queue_wait.labels(model).observe(info.queue_wait_s)
        return answers

    async def stop(self) -> None:
        await asyncio.gather(*(b.stop() for b in self.batchers.values()))

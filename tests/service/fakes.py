"""A fake backend for API tests of the gateway alone (the real ones are tested separately)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from model_store.images import ImageError, ImageLimits, load_upright_rgb, validate
from service.backends.base import WorkerFacts


class FakeBackend:
    """Answers from the image itself: label = its mean colour's dominant channel.

    Decodes for real, so undecodable images fail per image, as in the worker. ``delay`` slows
    every batch, ``fail`` raises an exception for every batch (``fail_on``: only batches holding
    that image), ``ready`` drives readiness per model.
    """

    labels = ("red", "green", "blue")

    def __init__(self, models: list[str], delay: float = 0.0) -> None:
        self.models = models
        self.delay = delay
        self.fail: Exception | None = None
        self.fail_on: bytes | None = None
        self.ready: bool | dict[str, bool] = True
        self.batches: list[int] = []
        self.images: list[bytes] = []
        self.top_ks: list[int] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def classify(self, model: str, images: list[bytes], top_k: int) -> list[dict[str, Any]]:
        self.batches.append(len(images))
        self.images += images
        self.top_ks.append(top_k)
        await asyncio.sleep(self.delay)
        if self.fail is not None and (self.fail_on is None or self.fail_on in images):
            raise self.fail
        return [self._one(data, top_k) for data in images]

    def _one(self, data: bytes, top_k: int) -> dict[str, Any]:
        try:
            image = load_upright_rgb(validate(data, ImageLimits()))
        except ImageError as exc:
            return {"error": {"code": exc.code, "message": str(exc)}}
        means = np.asarray(image, dtype=np.float64).mean(axis=(0, 1)).tolist()
        order = sorted(range(3), key=lambda i: -means[i])
        total = sum(means) or 1.0
        return {
            "predictions": [
                {"index": i, "label": self.labels[i], "score": means[i] / total}
                for i in order[:top_k]
            ]
        }

    def worker_facts(self) -> dict[str, WorkerFacts]:
        return {
            m: WorkerFacts(runtime="eager", batch_buckets=[1, 2, 4, 8], parameters=1000 + i)
            for i, m in enumerate(self.models)
        }

    async def readiness(self) -> dict[str, str]:
        ready = (
            self.ready if isinstance(self.ready, dict) else dict.fromkeys(self.models, self.ready)
        )
        return {m: "ready" if ready.get(m) else "worker restarting" for m in self.models}

"""A fake backend for API tests of the gateway alone (the real ones are tested separately)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from model_store.images import decode_rgb


class FakeBackend:
    """Answers from the image itself: label = its mean colour's dominant channel.

    Decodes for real, so undecodable images fail per image, as in the worker. ``delay`` slows
    every batch, ``fail`` raises an exception for every batch, ``ready`` drives readiness.
    """

    labels = ("red", "green", "blue")

    def __init__(self, models: list[str], delay: float = 0.0) -> None:
        self.models = models
        self.delay = delay
        self.fail: Exception | None = None
        self.ready = True
        self.batches: list[int] = []

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def classify(self, model: str, images: list[bytes], top_k: int) -> list[dict[str, Any]]:
        self.batches.append(len(images))
        await asyncio.sleep(self.delay)
        if self.fail is not None:
            raise self.fail
        return [self._one(data, top_k) for data in images]

    def _one(self, data: bytes, top_k: int) -> dict[str, Any]:
        try:
            image = decode_rgb(data)
        except ValueError as exc:
            return {"error": {"code": "undecodable_image", "message": str(exc)}}
        means = np.asarray(image, dtype=np.float64).mean(axis=(0, 1)).tolist()
        order = sorted(range(3), key=lambda i: -means[i])
        total = sum(means) or 1.0
        return {
            "predictions": [
                {"index": i, "label": self.labels[i], "score": means[i] / total}
                for i in order[:top_k]
            ]
        }

    async def readiness(self) -> dict[str, str]:
        return {m: "ready" if self.ready else "worker restarting" for m in self.models}

"""A fake backend for API tests of the gateway alone (the real ones are tested separately)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from contract.images import ImageError, ImageLimits, validate
from model_store.worker.images import load_upright_rgb
from service.backends.base import BatchResult, WorkerFacts, check_results, one_endpoint
from service.inputs import Upload
from service.schemas import READY, EndpointStatus

FAKE_INPUT_SIZE = 16
"""The side of the preprocessed inputs the fake models take (small: JSON tests stay fast)."""


class FakeBackend:
    """Answers from the image itself: label = its mean colour's dominant channel (for a
    preprocessed input: its channel means, softmaxed).

    Decodes for real, so undecodable images fail per image, as in the worker. ``delay`` slows
    every batch (per model, given a mapping), ``fail`` raises an exception for every batch
    (``fail_on``: only batches holding that image), ``ready`` drives readiness per model.
    """

    labels = ("red", "green", "blue")

    def __init__(self, models: list[str], delay: float | Mapping[str, float] = 0.0) -> None:
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

    async def classify(
        self, model: str, inputs: Sequence[Upload], top_k: int, probabilities: bool = False
    ) -> list[BatchResult]:
        images = [item.data for item in inputs]
        self.batches.append(len(images))
        self.images += images
        self.top_ks.append(top_k)
        await asyncio.sleep(
            self.delay if isinstance(self.delay, float | int) else self.delay[model]
        )
        if self.fail is not None and (self.fail_on is None or self.fail_on in images):
            raise self.fail
        answers = [self._one(item, top_k, probabilities) for item in inputs]
        return check_results(answers, len(inputs), probabilities)

    def _one(self, item: Upload, top_k: int, probabilities: bool) -> dict[str, Any]:
        if item.kind == "tensor":
            means = np.frombuffer(item.data, "<f4").reshape(3, -1).mean(axis=1)
            scores = (np.exp(means) / np.exp(means).sum()).tolist()
        else:
            try:
                image = load_upright_rgb(validate(item.data, ImageLimits()))
            except ImageError as exc:
                return {"error": {"code": exc.code, "message": str(exc)}}
            means = np.asarray(image, dtype=np.float64).mean(axis=(0, 1))
            scores = (means / (means.sum() or 1.0)).tolist()
        order = sorted(range(3), key=lambda i: -scores[i])
        result: dict[str, Any] = {
            "predictions": [
                {"index": i, "label": self.labels[i], "score": scores[i]} for i in order[:top_k]
            ]
        }
        if probabilities:
            result["probabilities"] = scores
        return result

    def worker_facts(self) -> dict[str, WorkerFacts]:
        return {
            m: WorkerFacts(
                runtime="eager",
                batch_buckets=[1, 2, 4, 8],
                parameters=1000 + i,
                input_size=FAKE_INPUT_SIZE,
                num_classes=len(self.labels),
            )
            for i, m in enumerate(self.models)
        }

    async def readiness(self) -> dict[str, str]:
        return self._states()

    def endpoints(self) -> dict[str, list[EndpointStatus]]:
        return one_endpoint("fake", self._states())

    def ready_workers(self, model: str) -> int:
        return int(self._states()[model] == READY)

    def _states(self) -> dict[str, str]:
        ready = (
            self.ready if isinstance(self.ready, dict) else dict.fromkeys(self.models, self.ready)
        )
        return {m: READY if ready.get(m) else "worker restarting" for m in self.models}

"""The gateway over a backend that answers at once: what the gateway alone costs per image
(``bench.capacity`` runs it as ``python -m bench.null_gateway --port PORT``)."""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
import uvicorn

from perf.images import CAMERA_UPLOADS, image_pool
from perf.stack import start_gateway
from service.app import create_app
from service.backends.base import BatchResult, WorkerFacts, check_results, one_endpoint
from service.schemas import READY, EndpointStatus
from service.settings import GatewaySettings
from service.uploads import Upload

NULL_INPUT_SIZE = 224
NULL_CLASSES = 1000


class NullBackend:
    """Every input gets the same answer, at once: no decode, no model, no network."""

    def __init__(self, models: list[str]) -> None:
        self.models = models

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def classify(
        self, model: str, inputs: Sequence[Upload], top_k: int, probabilities: bool = False
    ) -> list[BatchResult]:
        """Checked as a worker's answer is: that check is part of what the gateway costs."""
        answer: dict[str, Any] = {"predictions": [{"index": 0, "label": "null", "score": 1.0}]}
        if probabilities:
            answer["probabilities"] = [1.0] + [0.0] * (NULL_CLASSES - 1)
        return check_results([answer for _ in inputs], len(inputs), probabilities)

    async def readiness(self) -> dict[str, str]:
        return dict.fromkeys(self.models, READY)

    def endpoints(self) -> dict[str, list[EndpointStatus]]:
        return one_endpoint("null", dict.fromkeys(self.models, READY))

    def ready_workers(self, model: str) -> int:
        return 1

    def worker_facts(self) -> dict[str, WorkerFacts]:
        facts = WorkerFacts(
            runtime="null",
            batch_buckets=[1, 2, 4, 8],
            input_size=NULL_INPUT_SIZE,
            num_classes=NULL_CLASSES,
        )
        return dict.fromkeys(self.models, facts)


def null_gateway_efficiency(seconds: float) -> dict[str, Any]:
    """The gateway over a backend that answers at once: images per CPU-second of the gateway
    (validation, batching, HTTP), loaded by 64 closed-loop clients from this process."""
    [data] = image_pool(1, CAMERA_UPLOADS, quality=88)

    async def load(url: str, gateway: psutil.Process) -> tuple[int, float]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            done = 0
            stop = time.perf_counter() + seconds

            async def client_loop() -> None:
                nonlocal done
                while time.perf_counter() < stop:
                    response = await client.post(
                        "/v1/models/eca_resnet50/classify",
                        content=data,
                        headers={"Content-Type": "image/jpeg"},
                    )
                    done += response.status_code == 200

            cpu_before = sum(gateway.cpu_times()[:2])
            await asyncio.gather(*(client_loop() for _ in range(64)))
            return done, sum(gateway.cpu_times()[:2]) - cpu_before

    with tempfile.TemporaryDirectory(prefix="bench-null-") as tmp:
        process, url = start_gateway({}, Path(tmp) / "gateway.log", module="bench.null_gateway")
        try:
            images, cpu_seconds = asyncio.run(load(url, psutil.Process(process.pid)))
        finally:
            process.terminate()
            process.wait(30)
    return {
        "images": images,
        "wall_img_per_s": images / seconds,
        "gateway_cpu_seconds": cpu_seconds,
        "img_per_cpu_second": images / cpu_seconds if cpu_seconds else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    settings = GatewaySettings(models=["eca_resnet50"], queue_limit=1024)
    app = create_app(settings, NullBackend(settings.models))  # type: ignore[arg-type]
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")

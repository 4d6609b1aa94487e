"""Worker doubles: TorchServe's routes the gateway uses, answering each batch after a service
time drawn from a measured distribution, so a benchmark can put more workers behind one gateway
than this machine has cores.

``GET /models/{model}`` (one READY worker), ``POST /predictions/{model}`` (a batch: ``--base-ms``
+ ``--per-image-ms`` x its size, log-normal jitter, one batch at a time as one worker computes)
and ``GET /metrics`` (the batches answered, named as TorchServe's own counter). All doubles run
in one process of their own."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from typing import Any

from contract import batch
from contract.protocol import READY_STATUS, REQUESTS_COUNTER, RESULTS_FIELD

BUCKETS = [1, 2, 4, 8]


def service_seconds(size: int, base_ms: float, per_image_ms: float, rng: random.Random) -> float:
    """One batch's service time: the mean for its size, with log-normal jitter (sigma 0.15)."""
    mean = (base_ms + per_image_ms * size) / 1000
    return mean * rng.lognormvariate(-(0.15**2) / 2, 0.15)


def worker_capacity(base_ms: float, per_image_ms: float) -> float:
    """Images per second one worker double answers in full batches, one batch at a time."""
    largest = BUCKETS[-1]
    return largest / ((base_ms + per_image_ms * largest) / 1000)


def double_app(base_ms: float, per_image_ms: float, seed: int) -> Any:
    """One worker double: the description, predictions and metrics routes, nothing else."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    rng = random.Random(seed)
    described = [
        {
            "batchSize": 1,
            "workers": [{"status": READY_STATUS}],
            "customizedMetadata": {"runtime": "simulated", "batch_buckets": BUCKETS},
        }
    ]
    answer = {"predictions": [{"index": 0, "label": "simulated", "score": 1.0}]}
    answered = 0
    computing = asyncio.Lock()

    async def describe(request: Request) -> JSONResponse:
        return JSONResponse(described)

    async def predict(request: Request) -> JSONResponse:
        nonlocal answered
        size = len(batch.decode(await request.body()).inputs)
        async with computing:  # one worker: batches are computed one after another
            await asyncio.sleep(service_seconds(size, base_ms, per_image_ms, rng))
        answered += 1
        return JSONResponse({RESULTS_FIELD: [answer] * size})

    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(f'{REQUESTS_COUNTER}{{model="double"}} {answered}\n')

    return Starlette(
        routes=[
            Route("/models/{model}", describe),
            Route("/predictions/{model}", predict, methods=["POST"]),
            Route("/metrics", metrics),
        ]
    )


async def serve_doubles(ports: list[int], base_ms: float, per_image_ms: float) -> None:
    import uvicorn

    servers = [
        uvicorn.Server(
            uvicorn.Config(
                double_app(base_ms, per_image_ms, seed=port),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                access_log=False,
            )
        )
        for port in ports
    ]
    await asyncio.gather(*(server.serve() for server in servers))


def start_doubles(ports: list[int], base_ms: float, per_image_ms: float) -> subprocess.Popen[bytes]:
    """One process serving a double on each of ``ports``, once every one answers."""
    from perf.stack import started_answering  # not in the doubles' process: it imports torch

    code = (
        "import asyncio, sys; from bench.worker_doubles import serve_doubles; "
        "asyncio.run(serve_doubles(list(map(int, sys.argv[3:])), float(sys.argv[1]), "
        "float(sys.argv[2])))"
    )
    args = [str(base_ms), str(per_image_ms), *map(str, ports)]
    return started_answering(
        [sys.executable, "-c", code, *args],
        [f"http://127.0.0.1:{port}/metrics" for port in ports],
        "the worker doubles",
    )

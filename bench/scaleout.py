"""Does the gateway spread batches over every worker, and does it become the limit first?

``python -m bench.scaleout [--replicas 1,2,4,8,16] [--load 0.7] [--duration 10]``

The real gateway (``python -m service``, its own process, CPU time measured) in front of N worker
doubles: TorchServe's two routes the gateway uses (``GET /models/{model}``, ``POST
/predictions/{model}``) answering each batch after a service time drawn from a measured
distribution (``--base-ms`` + ``--per-image-ms`` x batch size, log-normal jitter; the defaults
are OpenVINO int8 eca_resnet50 on 2 cores with the worker's parallel decode, bench/README). The
doubles run in one separate process, so N is not bounded by this machine's cores. For each N,
open-loop Poisson arrivals at ``--load`` x the N workers' capacity: served img/s, p50/p99, the
share of batches each replica computed (the gateway's ``/v1/models/{model}/ready``), and the
gateway's CPU seconds per image. Real TorchServe replicas behind DNS discovery are tested in
``tests/service/test_scaleout.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from model_store.worker.launcher import free_ports
from model_store.worker.protocol import READY_STATUS, RESULTS_FIELD, TOP_K_FIELD
from model_store.worker.synthetic import encode, make_images

from .capacity import open_loop, summarize
from .common import columns_table, environment, progress, write_results
from .stack import start_gateway

MODEL = "eca_resnet50"
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
    """One worker double: the description and predictions routes, nothing else."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
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

    async def describe(request: Request) -> JSONResponse:
        return JSONResponse(described)

    async def predict(request: Request) -> JSONResponse:
        form = await request.form()
        size = sum(1 for name in form if name != TOP_K_FIELD)
        await form.close()
        await asyncio.sleep(service_seconds(size, base_ms, per_image_ms, rng))
        return JSONResponse({RESULTS_FIELD: [answer] * size})

    return Starlette(
        routes=[
            Route("/models/{model}", describe),
            Route("/predictions/{model}", predict, methods=["POST"]),
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
    code = (
        "import asyncio, sys; from bench.scaleout import serve_doubles; "
        "asyncio.run(serve_doubles(list(map(int, sys.argv[3:])), float(sys.argv[1]), "
        "float(sys.argv[2])))"
    )
    args = [str(base_ms), str(per_image_ms), *map(str, ports)]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=Path(__file__).resolve().parents[1]
    )
    deadline = time.monotonic() + 60
    for port in ports:
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/models/{MODEL}", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.terminate()
                    raise RuntimeError("the worker doubles did not start") from None
                time.sleep(0.2)
    return process


def measure(replicas: int, args: argparse.Namespace, upload: bytes, workdir: Path) -> dict:
    ports = free_ports(replicas)
    urls = ",".join(f"http://127.0.0.1:{port}" for port in ports)
    doubles = start_doubles(ports, args.base_ms, args.per_image_ms)
    env = {
        "GATEWAY_MODELS": MODEL,
        "GATEWAY_TORCHSERVE_INFERENCE_URL": urls,
        "GATEWAY_TORCHSERVE_MANAGEMENT_URL": urls,
        "GATEWAY_TORCHSERVE_KEY_FILE": "",
        "GATEWAY_QUEUE_LIMIT": "1024",
        "GATEWAY_MAX_CONCURRENT_UPLOADS": "1024",
    }
    gateway, url = start_gateway(env, workdir / f"gateway-{replicas}.log")
    try:
        rate = args.load * replicas * worker_capacity(args.base_ms, args.per_image_ms)
        return asyncio.run(offer(url, psutil.Process(gateway.pid), rate, args, upload, replicas))
    finally:
        gateway.terminate()
        gateway.wait(30)
        doubles.terminate()
        doubles.wait(30)


async def offer(
    url: str,
    gateway: psutil.Process,
    rate: float,
    args: argparse.Namespace,
    upload: bytes,
    replicas: int,
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def send(data: bytes) -> int:
            response = await client.post(
                f"/v1/models/{MODEL}/classify", files=[("file", ("x.jpg", data, "image/jpeg"))]
            )
            return response.status_code

        for _ in range(2 * replicas):  # warm up: every endpoint answered once
            await send(upload)
        cpu_before = sum(gateway.cpu_times()[:2])
        outcomes, lags, elapsed = await open_loop(send, [upload], rate, args.duration, seed=1)
        cpu = sum(gateway.cpu_times()[:2]) - cpu_before
        ready = (await client.get(f"/v1/models/{MODEL}/ready")).json()["endpoints"]
    row = {"replicas": replicas, "offered": rate} | summarize(outcomes, lags, elapsed, 1.0)
    batches = [endpoint["batches"] for endpoint in ready]
    answered = sum(status == 200 for status, _ in outcomes) or 1
    row |= {
        "endpoints_ready": sum(endpoint["status"] == "ready" for endpoint in ready),
        "share_min": min(batches) / (sum(batches) or 1),
        "share_max": max(batches) / (sum(batches) or 1),
        "gateway_cpu_ms_per_image": cpu / answered * 1000,
        "gateway_cpu_share": cpu / elapsed,
    }
    progress(
        f"{replicas} replicas, {rate:.0f} img/s offered: {row['img_per_s']:.0f} served, "
        f"p99 {row['p99_ms']:.0f} ms, batch shares {row['share_min']:.2f}-{row['share_max']:.2f}, "
        f"gateway {row['gateway_cpu_ms_per_image']:.2f} ms CPU/img"
    )
    return row


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--replicas", default="1,2,4,8,16")
    parser.add_argument("--load", type=float, default=0.7, help="offered / the workers' capacity")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--base-ms", type=float, default=10.0)
    parser.add_argument("--per-image-ms", type=float, default=14.0)
    parser.add_argument("--upload-side", type=int, default=256, help="the JPEG uploaded, px")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    replicas = [int(n) for n in args.replicas.split(",")]
    image = make_images(1, seed=3, size=(args.upload_side, args.upload_side))[0][0]
    upload = encode(image, "JPEG")
    progress(
        f"worker double: {args.base_ms:g} ms + {args.per_image_ms:g} ms/image per batch, "
        f"{worker_capacity(args.base_ms, args.per_image_ms):.0f} img/s each at batch "
        f"{BUCKETS[-1]}; {len(upload) / 1024:.0f} KiB uploads; {os.cpu_count()} CPUs here"
    )
    with tempfile.TemporaryDirectory(prefix="scaleout-") as logs:  # the gateways' logs
        rows = [measure(n, args, upload, Path(logs)) for n in replicas]
    table = columns_table(
        [
            ("replicas", "replicas"),
            ("offered img/s", "offered"),
            ("served img/s", "img_per_s"),
            ("p50 ms", "p50_ms"),
            ("p99 ms", "p99_ms"),
            ("503", "refused_503"),
            ("ready endpoints", "endpoints_ready"),
            ("batch share min", "share_min"),
            ("batch share max", "share_max"),
            ("gateway CPU ms/img", "gateway_cpu_ms_per_image"),
            ("gateway CPU share", "gateway_cpu_share"),
        ],
        rows,
    )
    print(table)
    per_image = min(row["gateway_cpu_ms_per_image"] for row in rows) / 1000
    feeds = math.floor(1 / per_image / worker_capacity(args.base_ms, args.per_image_ms))
    print(
        f"one gateway process (one core) at {per_image * 1000:.2f} ms CPU/img feeds about "
        f"{feeds} such workers at their capacity"
    )
    results = {
        "benchmark": "scaleout",
        "environment": environment("cpu"),
        "config": vars(args) | {"out": str(args.out) if args.out else None},
        "worker_capacity_img_per_s": worker_capacity(args.base_ms, args.per_image_ms),
        "results": rows,
        "workers_one_gateway_feeds": feeds,
    }
    progress(f"JSON: {write_results('scaleout', results, args.out)}")
    return results


if __name__ == "__main__":
    main()

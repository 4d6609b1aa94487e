"""What each way of sending an image costs the gateway: ``/v1`` (raw body, multipart) against the
Open Inference Protocol (encoded images as BYTES, binary or base64 JSON; preprocessed pixels as
FP32, binary or JSON), over a backend that answers at once (``bench.null_gateway``), so the
numbers are the gateway's own work: reading, validating, batching, answering.

Closed loop, ``--clients`` at once; the encodings take turns in every round (rotated), and each
row sums its turns, so a noisy moment on the shared machine lands on all of them alike. Reported
per encoding: request bytes, requests/s, p50/p99 latency, and the gateway's CPU milliseconds per
image (its process's user+system time over the images it answered).

    python -m bench.protocols [--rounds 5] [--seconds 3] [--clients 8] [--images 1]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from contract.protocol import TENSOR_CHANNELS
from perf.common import percentile, report
from perf.images import CAMERA_UPLOADS, image_pool
from perf.stack import start_gateway
from service.settings import GatewaySettings

from .null_gateway import NULL_INPUT_SIZE

MODEL = "eca_resnet50"
MAX_BODY = GatewaySettings.model_fields["max_upload_bytes"].default
V2_INFER = f"/v2/models/{MODEL}/infer"
Request = tuple[str, bytes, dict[str, str]]  # path, body, headers


def v2_request(header: dict[str, Any], blob: bytes = b"") -> Request:
    text = json.dumps(header).encode()
    headers = {"Inference-Header-Content-Length": str(len(text))} if blob else {}
    return V2_INFER, text + blob, headers | {"Content-Type": "application/octet-stream"}


def v2_tensor(name: str, shape: list[int], datatype: str, **fields: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": name, "shape": shape, "datatype": datatype, **fields}],
        "outputs": [{"name": "probabilities", "parameters": {"classification": 5}}],
    }


def encodings(images: list[bytes]) -> dict[str, Request]:
    """The same images, one request per way of sending them."""
    n = len(images)
    pixels = np.random.default_rng(0).normal(
        size=(n, TENSOR_CHANNELS, NULL_INPUT_SIZE, NULL_INPUT_SIZE)
    )
    floats = pixels.astype("<f4").tobytes()
    prefixed = b"".join(struct.pack("<I", len(data)) + data for data in images)
    multipart = httpx.Request(
        "POST",
        "http://x",
        files=[("file", (f"{i}", d, "image/jpeg")) for i, d in enumerate(images)],
    )
    requests: dict[str, Request] = {
        "v1 multipart": (
            f"/v1/models/{MODEL}/classify",
            multipart.read(),
            {"Content-Type": multipart.headers["Content-Type"]},
        ),
        "v2 BYTES binary": v2_request(
            v2_tensor("images", [n], "BYTES", parameters={"binary_data_size": len(prefixed)}),
            prefixed,
        ),
        "v2 BYTES base64 JSON": v2_request(
            v2_tensor("images", [n], "BYTES", data=[base64.b64encode(d).decode() for d in images])
        ),
        "v2 FP32 binary": v2_request(
            v2_tensor(
                "pixel_values",
                list(pixels.shape),
                "FP32",
                parameters={"binary_data_size": len(floats)},
            ),
            floats,
        ),
        "v2 FP32 JSON": v2_request(
            v2_tensor("pixel_values", list(pixels.shape), "FP32", data=pixels.ravel().tolist())
        ),
    }
    if n == 1:
        requests["v1 raw body"] = (
            f"/v1/models/{MODEL}/classify",
            images[0],
            {"Content-Type": "image/jpeg"},
        )
    return requests


async def turn(
    client: httpx.AsyncClient, request: Request, clients: int, seconds: float
) -> list[float]:
    """Latencies of the answered requests of ``clients`` closed loops for ``seconds``."""
    path, body, headers = request
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def loop() -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            response = await client.post(path, content=body, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"{path}: HTTP {response.status_code} {response.text[:300]}")
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies


async def measure(
    url: str,
    cpu_seconds: Callable[[], float],
    requests: dict[str, Request],
    args: argparse.Namespace,
) -> dict[str, dict[str, Any]]:
    names = list(requests)
    totals = {name: {"latencies": [], "cpu_s": 0.0, "wall_s": 0.0} for name in names}
    limits = httpx.Limits(max_connections=args.clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        for name in names:  # warm-up, not counted
            await turn(client, requests[name], args.clients, 0.5)
        for round_ in range(args.rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            print(f"round {round_ + 1}/{args.rounds}: {', '.join(order)}", flush=True)
            for name in order:
                cpu, wall = cpu_seconds(), time.perf_counter()
                totals[name]["latencies"] += await turn(
                    client, requests[name], args.clients, args.seconds
                )
                totals[name]["cpu_s"] += cpu_seconds() - cpu
                totals[name]["wall_s"] += time.perf_counter() - wall
    return totals


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="per encoding and round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--images", type=int, default=1, help="images per request")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    images = image_pool(args.images, CAMERA_UPLOADS, quality=88)
    requests = {}
    for name, request in encodings(images).items():
        if len(request[1]) > MAX_BODY:
            print(f"{name}: {len(request[1]):,} bytes, past the gateway's limit; not measured")
        else:
            requests[name] = request
    with tempfile.TemporaryDirectory(prefix="bench-protocols-") as tmp:
        process, url = start_gateway({}, Path(tmp) / "gateway.log", module="bench.null_gateway")
        gateway = psutil.Process(process.pid)
        try:
            totals = asyncio.run(measure(url, lambda: sum(gateway.cpu_times()[:2]), requests, args))
        finally:
            process.terminate()
            process.wait(30)
    rows = []
    baseline = None
    for name, total in totals.items():
        latencies, count = total["latencies"], len(total["latencies"])
        cpu_ms_per_image = 1000 * total["cpu_s"] / (count * args.images)
        baseline = baseline or cpu_ms_per_image
        rows.append(
            {
                "encoding": name,
                "request_kib": len(requests[name][1]) / 1024,
                "requests": count,
                "req_per_s": count / total["wall_s"],
                "p50_ms": 1000 * percentile(latencies, 50),
                "p99_ms": 1000 * percentile(latencies, 99),
                "gateway_cpu_ms_per_image": cpu_ms_per_image,
                "cpu_vs_first": cpu_ms_per_image / baseline,
            }
        )
    columns = [
        ("encoding", "encoding"),
        ("request KiB", "request_kib"),
        ("requests", "requests"),
        ("req/s", "req_per_s"),
        ("p50 ms", "p50_ms"),
        ("p99 ms", "p99_ms"),
        ("gateway CPU ms/image", "gateway_cpu_ms_per_image"),
        ("CPU vs first row", "cpu_vs_first"),
    ]
    return report("protocols", args, rows, columns)


if __name__ == "__main__":
    main()

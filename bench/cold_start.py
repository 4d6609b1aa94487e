"""What a worker costs before it answers: the first request per batch bucket after ready (then
the next, steady), and the seconds from a worker's crash to the READY worker TorchServe starts."""

from __future__ import annotations

import os
import signal
import time

import httpx

from contract.protocol import READY_STATUS, input_field
from model_store.torchserve.launcher import TorchServe
from perf.common import progress


def first_calls(server: TorchServe, model: str, pool: list[bytes], buckets: tuple[int, ...]):
    """Per bucket: the first request after ready, then the next (steady), in ms."""
    rows = []
    for bucket in buckets:
        files = [(input_field("image", i), ("x.jpg", pool[i], "image/jpeg")) for i in range(bucket)]
        times = []
        for _ in range(3):
            started = time.perf_counter()
            response = httpx.post(
                f"{server.inference_url}/predictions/{model}",
                files=files,
                headers=server.headers("inference"),
                timeout=300,
            )
            response.raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
        rows.append({"bucket": bucket, "first_ms": times[0], "steady_ms": min(times[1:])})
        progress(f"  bucket {bucket}: first {times[0]:.0f} ms, steady {min(times[1:]):.0f} ms")
    return rows


def crash_restart_s(server: TorchServe, model: str, timeout_s: float = 600) -> float:
    """Seconds from a SIGKILL of ``model``'s worker to the READY worker TorchServe starts."""
    [victim] = [int(w["pid"]) for w in server.workers(model)]
    os.kill(victim, signal.SIGKILL)
    started = time.perf_counter()
    while time.perf_counter() - started < timeout_s:
        workers = server.workers(model)
        if any(w.get("status") == READY_STATUS and int(w["pid"]) != victim for w in workers):
            return time.perf_counter() - started
        time.sleep(0.2)
    raise RuntimeError(f"{model}: no worker READY {timeout_s:g} s after the crash")

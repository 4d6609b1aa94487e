"""The load loops: closed loop (N concurrent clients, each sending its next request when the last
one is answered, for a fixed time) and open loop (Poisson arrivals at a rate, whatever the
answers do), and the summary of an open-loop run that the capacity rule (``perf.slo``) reads."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from .common import percentile

# A sender does one request and returns how many images it classified (0 on failure).
Sender = Callable[[int], Awaitable[int]]


@dataclass
class LoadResult:
    concurrency: int
    elapsed_s: float
    latencies_s: list[float] = field(default_factory=list)
    images: int = 0
    errors: int = 0

    def summary(self) -> dict[str, Any]:
        ok = self.latencies_s or [float("nan")]
        return {
            "concurrency": self.concurrency,
            "requests": len(self.latencies_s) + self.errors,
            "errors": self.errors,
            "images": self.images,
            "req_per_s": len(self.latencies_s) / self.elapsed_s,
            "img_per_s": self.images / self.elapsed_s,
            "p50_ms": percentile(ok, 50) * 1000,
            "p90_ms": percentile(ok, 90) * 1000,
            "p99_ms": percentile(ok, 99) * 1000,
        }


async def closed_loop(
    send: Sender, concurrency: int, duration_s: float, warmup_s: float = 0.0
) -> LoadResult:
    """Run ``concurrency`` clients for ``warmup_s`` (not counted) then ``duration_s``."""
    result = LoadResult(concurrency, duration_s)
    start = time.perf_counter()
    measure_from = start + warmup_s
    stop_at = measure_from + duration_s
    counter = 0

    async def client() -> None:
        nonlocal counter
        while (now := time.perf_counter()) < stop_at:
            counter += 1
            try:
                images = await send(counter)
            except Exception:
                images = 0
            done = time.perf_counter()
            if now >= measure_from:
                if images:
                    result.latencies_s.append(done - now)
                    result.images += images
                else:
                    result.errors += 1

    await asyncio.gather(*(client() for _ in range(concurrency)))
    result.elapsed_s = max(time.perf_counter(), stop_at) - measure_from
    return result


OpenSend = Callable[[bytes], Awaitable[int]]
"""An open-loop sender: one upload -> the HTTP status it got."""


async def open_loop(send: OpenSend, pool: list[bytes], rate: float, duration_s: float, seed: int):
    """Poisson arrivals at ``rate``/s for ``duration_s``; every request is awaited to the end."""
    rng = random.Random(seed)
    start = time.perf_counter() + 0.05
    scheduled = start
    lags: list[float] = []
    tasks = []

    async def one(at: float, data: bytes) -> tuple[int, float]:
        try:
            status = await send(data)
        except httpx.HTTPError:
            status = 0
        return status, time.perf_counter() - at

    index = 0
    while (scheduled := scheduled + rng.expovariate(rate)) < start + duration_s:
        if (delay := scheduled - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        lags.append(time.perf_counter() - scheduled)
        tasks.append(asyncio.create_task(one(scheduled, pool[index % len(pool)])))
        index += 1
    outcomes = await asyncio.gather(*tasks)
    return outcomes, lags, time.perf_counter() - start


def summarize(outcomes: list[tuple[int, float]], lags: list[float], elapsed: float, slo_s: float):
    ok = [latency for status, latency in outcomes if status == 200]
    total = len(outcomes) or 1
    refused = sum(status == 503 for status, _ in outcomes)
    failed = total - len(ok) - refused
    nan = float("nan")
    return {
        "requests": len(outcomes),
        "img_per_s": len(ok) / elapsed,
        "p50_ms": percentile(ok, 50) * 1000 if ok else nan,
        "p90_ms": percentile(ok, 90) * 1000 if ok else nan,
        "p99_ms": percentile(ok, 99) * 1000 if ok else nan,
        "refused_503": refused / total,
        "errors": failed / total,
        "late": sum(latency > slo_s for latency in ok) / total,
        "goodput_img_per_s": sum(latency <= slo_s for latency in ok) / elapsed,
        "generator_lag_p99_ms": percentile(lags, 99) * 1000 if lags else 0.0,
    }

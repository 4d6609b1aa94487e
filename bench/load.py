"""Closed-loop HTTP load: N concurrent clients, each sending its next request when the last
one is answered, for a fixed time. Shared by the TorchServe and gateway benchmarks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

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

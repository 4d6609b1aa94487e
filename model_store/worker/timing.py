"""Where a worker request's time goes: named parts of one call, timed as they happen, reported
in the worker's answer (``contract.answers.WorkerTiming``)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

from contract.answers import WorkerTiming


class Stopwatch:
    """Started when made; ``part(name)`` adds the time spent inside it to that part."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started

    def timing(self) -> WorkerTiming:
        """The parts so far, and the time since it started, in milliseconds."""

        def ms(seconds: float) -> float:
            return round(seconds * 1000, 2)

        return {
            "wait_ms": ms(self.seconds["wait"]),
            "decode_ms": ms(self.seconds["decode"]),
            "model_ms": ms(self.seconds["model"]),
            "total_ms": ms(time.perf_counter() - self.started),
        }

"""A circuit breaker per model: after ``failures`` consecutive failures, refuse at once for
``cooldown_s``, then let exactly one probe through.

When a worker is down, waiting on connection timeouts piles up requests; failing fast with a 503
and Retry-After lets clients back off. Only the backend's own failures count (5xx, transport
errors, malformed answers): a request the worker refused as bad input says nothing about its
health. After the cooldown the circuit is half-open: one call goes through, the others are still
refused; the probe's success closes the circuit, its failure opens it again, and a probe that
ends with no verdict (cancelled, refused as bad input) frees the slot for the next one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum


class State(Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError(f"need failures >= 1 and cooldown_s > 0, got {failures}, {cooldown_s}")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.state = State.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False

    def acquire(self) -> float | None:
        """None: the call may go through (and must end in one ``record_*`` or ``release``).
        Otherwise the seconds after which to try again."""
        if self.state is State.OPEN:
            remaining = self._opened_at + self.cooldown_s - self.clock()
            if remaining > 0:
                return remaining
            self.state = State.HALF_OPEN
        if self.state is State.HALF_OPEN:
            if self._probing:
                return 1.0
            self._probing = True
        return None

    def record_success(self) -> None:
        self.state = State.CLOSED
        self._consecutive = 0
        self._probing = False

    def record_failure(self) -> None:
        self._consecutive += 1
        if self.state is State.HALF_OPEN or (
            self.state is State.CLOSED and self._consecutive >= self.failures
        ):
            self.state = State.OPEN
            self._opened_at = self.clock()
            self._probing = False

    def release(self) -> None:
        """The call ended without saying anything of the backend's health."""
        self._probing = False

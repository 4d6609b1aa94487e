"""A circuit breaker: after ``failures`` consecutive failures, refuse at once for ``cooldown_s``.

When TorchServe is down, waiting on connection timeouts piles up requests; failing fast with a
503 and Retry-After lets clients back off. After the cooldown one trial call goes through
(half-open); its success closes the circuit, its failure opens it again.
"""

from __future__ import annotations

import time


class CircuitBreaker:
    def __init__(self, failures: int, cooldown_s: float) -> None:
        if failures < 1 or cooldown_s <= 0:
            raise ValueError(f"need failures >= 1 and cooldown_s > 0, got {failures}, {cooldown_s}")
        self.failures = failures
        self.cooldown_s = cooldown_s
        self._consecutive = 0
        self._opened_at: float | None = None

    def retry_after(self) -> float | None:
        """Seconds to wait if the circuit is open now, else None (a call may go through)."""
        if self._opened_at is None:
            return None
        remaining = self._opened_at + self.cooldown_s - time.monotonic()
        if remaining > 0:
            return remaining
        self._opened_at = None  # half-open: let one trial through
        self._consecutive = self.failures - 1
        return None

    def record_success(self) -> None:
        self._consecutive = 0
        self._opened_at = None

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._consecutive >= self.failures:
            self._opened_at = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None and time.monotonic() < self._opened_at + self.cooldown_s

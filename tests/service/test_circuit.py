"""The circuit breaker alone, on a fake clock: opening, cooldown, exactly one half-open probe,
closing, re-opening, and probes that end with no verdict."""

from __future__ import annotations

import pytest

from service.backends.circuit import CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def opened(clock: Clock, failures: int = 3) -> CircuitBreaker:
    breaker = CircuitBreaker(failures, cooldown_s=5.0, clock=clock)
    for _ in range(failures):
        assert breaker.acquire() is None
        breaker.record_failure()
    return breaker


def probing(clock: Clock) -> CircuitBreaker:
    """Opened, cooled down, and its one probe let through."""
    breaker = opened(clock)
    clock.now += 6
    assert breaker.acquire() is None
    return breaker


def test_opens_after_consecutive_failures_only(clock):
    breaker = CircuitBreaker(3, cooldown_s=5.0, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # resets the count
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is State.CLOSED and breaker.acquire() is None
    breaker.record_failure()
    assert breaker.state is State.OPEN
    assert breaker.acquire() == pytest.approx(5.0)


def test_half_open_lets_exactly_one_probe_through(clock):
    breaker = opened(clock)
    clock.now += 4.9
    assert breaker.acquire() == pytest.approx(0.1)
    clock.now += 0.2
    assert breaker.acquire() is None  # the probe
    assert breaker.state is State.HALF_OPEN
    assert all(breaker.acquire() is not None for _ in range(5))  # everyone else still waits


def test_probe_success_closes_the_circuit(clock):
    breaker = probing(clock)
    breaker.record_success()
    assert breaker.state is State.CLOSED
    assert all(breaker.acquire() is None for _ in range(5))
    breaker.record_failure()  # a fresh count: one failure does not re-open it
    assert breaker.state is State.CLOSED


def test_probe_failure_opens_it_again_for_a_full_cooldown(clock):
    breaker = probing(clock)
    breaker.record_failure()
    assert breaker.state is State.OPEN
    assert breaker.acquire() == pytest.approx(5.0)


def test_a_probe_without_verdict_frees_the_slot(clock):
    breaker = probing(clock)
    assert breaker.acquire() is not None
    breaker.release()  # cancelled, or refused as bad input: says nothing of health
    assert breaker.state is State.HALF_OPEN
    assert breaker.acquire() is None  # the next probe


def test_a_sub_second_cooldown_is_allowed(clock):
    breaker = CircuitBreaker(1, cooldown_s=0.5, clock=clock)
    breaker.record_failure()
    assert breaker.acquire() == pytest.approx(0.5)


def test_bad_knobs_are_refused():
    with pytest.raises(ValueError, match="failures"):
        CircuitBreaker(0, 1.0)
    with pytest.raises(ValueError, match="cooldown"):
        CircuitBreaker(1, 0)


def test_one_failure_is_enough_when_so_configured(clock):
    breaker = CircuitBreaker(1, cooldown_s=5.0, clock=clock)
    breaker.record_failure()
    assert breaker.state is State.OPEN


def test_the_cooldown_ends_exactly_on_time_and_refused_callers_retry_within_a_second(clock):
    breaker = opened(clock)
    clock.now += 5.0  # exactly the cooldown
    assert breaker.acquire() is None
    assert breaker.acquire() == pytest.approx(1.0)  # while the probe runs

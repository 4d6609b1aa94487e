"""The batcher alone, driven by a fake backend: ordering, knobs, failures, cancellation, bounds."""

from __future__ import annotations

import asyncio
import time

import pytest

from service.batcher import Batcher, BatchSizeMismatch, DeadlineUnmeetable, QueueFull


class FakeBackend:
    """Records batches; answers ``item * 10`` after ``delay``; fails batches holding ``poison``."""

    def __init__(self, delay: float = 0.0, poison: object = None) -> None:
        self.delay = delay
        self.poison = poison
        self.batches: list[list[int]] = []

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay)
        if self.poison is not None and self.poison in items:
            raise RuntimeError(f"backend failed on {self.poison}")
        return [item * 10 for item in items]


NEVER = 10.0
"""The longest max_wait_s the batcher takes: a test that depends on it not being waited out
fails (``within``) when it is, however slow the machine, instead of passing slowly."""
HANG = NEVER / 2


def run(coro):
    return asyncio.run(coro)


async def within(seconds: float, awaitable):
    """``awaitable``, or a failure saying the batcher hung (waited out ``NEVER``)."""
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        pytest.fail(f"the batcher still waited after {seconds:g} s (for max_wait_s?)")


def make(backend, **knobs) -> Batcher:
    defaults = {"max_batch_size": 4, "max_wait_s": 0.05, "max_queue": 64}
    return Batcher(backend, **(defaults | knobs))


def test_each_caller_gets_its_own_answer_in_order():
    async def scenario():
        backend = FakeBackend(delay=0.01)
        batcher = make(backend)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        await batcher.stop()
        return backend, results

    backend, results = run(scenario())
    assert [value for value, _ in results] == [i * 10 for i in range(10)]
    assert all(len(batch) <= 4 for batch in backend.batches)
    assert sorted(i for batch in backend.batches for i in batch) == list(range(10))
    assert max(len(batch) for batch in backend.batches) == 4  # concurrent callers were grouped


def test_batch_info_reports_size_and_waits():
    async def scenario():
        batcher = make(FakeBackend(delay=0.02), max_wait_s=0.03)
        results = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        await batcher.stop()
        return [info for _, info in results]

    infos = run(scenario())
    assert [info.size for info in infos] == [3, 3, 3]
    assert all(info.queue_wait_s >= 0 and info.run_s >= 0.02 for info in infos)


def test_lone_request_waits_out_the_fixed_delay_then_goes_alone():
    async def scenario():
        batcher = make(FakeBackend(), max_wait_s=0.05, deadline_aware=False)
        value, info = await within(HANG, batcher.submit(7))
        await batcher.stop()
        return value, info

    value, info = run(scenario())
    assert value == 70 and info.size == 1
    assert info.queue_wait_s >= 0.05  # the fixed policy waited for company


def test_full_batch_does_not_wait():
    async def scenario():
        batcher = make(FakeBackend(), max_batch_size=2, max_wait_s=NEVER, deadline_aware=False)
        results = await within(HANG, asyncio.gather(batcher.submit(1), batcher.submit(2)))
        await batcher.stop()
        return results

    assert [info.size for _, info in run(scenario())] == [2, 2]


def test_failure_reaches_only_its_own_batch():
    async def scenario():
        backend = FakeBackend(delay=0.01, poison=3)
        batcher = make(backend, max_batch_size=2, max_wait_s=0.02)
        outcomes = await asyncio.gather(
            *(batcher.submit(i) for i in range(6)), return_exceptions=True
        )
        await batcher.stop()
        return backend, outcomes

    backend, outcomes = run(scenario())
    poisoned = next(batch for batch in backend.batches if 3 in batch)
    for item, outcome in enumerate(outcomes):
        if item in poisoned:
            assert isinstance(outcome, RuntimeError) and "failed on 3" in str(outcome)
        else:
            assert outcome[0] == item * 10


def test_result_count_mismatch_fails_the_batch_loudly():
    async def short(items: list[int]) -> list[int]:
        return [0] * (len(items) - 1)

    async def scenario():
        batcher = make(short)
        outcomes = await asyncio.gather(
            batcher.submit(1), batcher.submit(2), return_exceptions=True
        )
        await batcher.stop()
        return outcomes

    outcomes = run(scenario())
    assert all(isinstance(o, BatchSizeMismatch) for o in outcomes)
    assert str(outcomes[0]) == "batcher: 2 items in, 1 results out"


def test_cancelled_caller_does_not_poison_the_batch():
    async def scenario():
        backend = FakeBackend(delay=0.05)
        batcher = make(backend, max_wait_s=0.02)
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(4)]
        await asyncio.sleep(0.03)  # dispatched, backend running
        tasks[1].cancel()
        queued_then_cancelled = asyncio.create_task(batcher.submit(99))
        await asyncio.sleep(0)
        queued_then_cancelled.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        later = await batcher.submit(5)
        await batcher.stop()
        return backend, results, later

    backend, results, later = run(scenario())
    assert isinstance(results[1], asyncio.CancelledError)
    assert [results[i][0] for i in (0, 2, 3)] == [0, 20, 30]
    assert later[0] == 50
    assert all(99 not in batch for batch in backend.batches)  # cancelled before dispatch: dropped


def test_queue_is_bounded():
    async def scenario():
        backend = FakeBackend(delay=0.2)
        batcher = make(
            backend, max_batch_size=2, max_queue=4, max_concurrent_batches=1, max_wait_s=0
        )
        first = [asyncio.create_task(batcher.submit(i)) for i in range(2)]
        await asyncio.sleep(0.05)  # the first batch is running; the one slot is busy
        queued = [asyncio.create_task(batcher.submit(i)) for i in range(2, 6)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull, match="4 items queued"):
            await batcher.submit(6)
        depth = batcher.depth
        results = await asyncio.gather(*first, *queued)
        await batcher.stop()
        return depth, results, backend

    depth, results, backend = run(scenario())
    assert depth == 4
    assert [value for value, _ in results] == [i * 10 for i in range(6)]
    assert [len(b) for b in backend.batches] == [2, 2, 2]


def test_concurrent_batches_are_limited():
    async def scenario():
        running = 0
        peak = 0

        async def backend(items: list[int]) -> list[int]:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.03)
            running -= 1
            return items

        batcher = make(backend, max_batch_size=1, max_wait_s=0, max_concurrent_batches=2)
        await asyncio.gather(*(batcher.submit(i) for i in range(8)))
        await batcher.stop()
        return peak

    assert run(scenario()) == 2


def test_stop_cancels_what_is_still_queued():
    async def scenario():
        batcher = make(
            FakeBackend(delay=0.2), max_batch_size=1, max_concurrent_batches=1, max_wait_s=0
        )
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.05)
        await batcher.stop()
        return await asyncio.gather(*tasks, return_exceptions=True)

    outcomes = run(scenario())
    assert any(isinstance(o, asyncio.CancelledError) for o in outcomes)


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"max_wait_s": -1}, "max_wait_s must be in"),
        ({"max_queue": 2}, "max_queue \\(2\\) must be >= max_batch_size \\(4\\)"),
        ({"max_concurrent_batches": 0}, "max_concurrent_batches must be >= 1"),
    ],
)
def test_bad_knobs_fail_at_construction(knobs, message):
    with pytest.raises(ValueError, match=message):
        make(FakeBackend(), **knobs)


def test_submit_many_admits_all_or_nothing():
    async def scenario():
        backend = FakeBackend(delay=0.2)
        batcher = make(backend, max_batch_size=1, max_queue=5, max_concurrent_batches=1)
        first = batcher.submit_many([1, 2, 3])
        await asyncio.sleep(0.01)  # 1 is running, 2 and 3 wait
        with pytest.raises(QueueFull):
            batcher.submit_many([4, 5, 6, 7])  # 2 queued + 4 > 5: none of them is queued
        assert batcher.depth == 2
        second = batcher.submit_many([8, 9, 10])  # 2 + 3 == 5 fits exactly
        results = await asyncio.gather(*first, *second)
        await batcher.stop()
        return backend, results

    backend, results = run(scenario())
    assert [value for value, _ in results] == [10, 20, 30, 80, 90, 100]
    assert sorted(i for batch in backend.batches for i in batch) == [1, 2, 3, 8, 9, 10]


def test_concurrent_multi_item_submissions_never_overfill_the_queue():
    """Many callers at once: each is admitted whole or refused whole, and the queue never holds
    more than its limit (the check and the queueing happen with no await between them)."""

    async def scenario():
        backend = FakeBackend(delay=0.05)
        batcher = make(backend, max_batch_size=2, max_queue=6, max_concurrent_batches=1)
        depths: list[int] = []

        async def caller(base: int) -> str:
            await asyncio.sleep(0)
            try:
                futures = batcher.submit_many([base, base + 1, base + 2])
            except QueueFull:
                return "refused"
            depths.append(batcher.depth)
            await asyncio.gather(*futures)
            return "answered"

        outcomes = await asyncio.gather(*(caller(100 * i) for i in range(12)))
        await batcher.stop()
        return backend, outcomes, depths

    backend, outcomes, depths = run(scenario())
    answered = outcomes.count("answered")
    assert 0 < answered < 12 and max(depths) <= 6
    assert sum(len(batch) for batch in backend.batches) == 3 * answered


def test_batches_respect_the_cost_limit_and_a_costly_item_opens_the_next():
    async def scenario():
        backend = FakeBackend(delay=0.01)
        batcher = make(
            backend, max_batch_size=8, max_wait_s=0.05, cost=lambda i: i, max_batch_cost=10
        )
        results = await asyncio.gather(*(batcher.submit(i) for i in (4, 5, 3, 9, 1, 12)))
        await batcher.stop()
        return backend, results

    backend, results = run(scenario())
    assert [value for value, _ in results] == [40, 50, 30, 90, 10, 120]
    assert all(sum(batch) <= 10 or len(batch) == 1 for batch in backend.batches)
    assert [12] in backend.batches  # alone past the limit, still served
    assert backend.batches[0] == [4, 5]  # 3 would make 12: it waited for the next batch


def test_on_dequeue_sees_every_item_answered_or_abandoned():
    async def scenario():
        waits: list[float] = []
        batcher = make(
            FakeBackend(delay=0.1),
            max_batch_size=1,
            max_concurrent_batches=1,
            on_dequeue=waits.append,
        )
        tasks = [asyncio.create_task(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.02)
        tasks[2].cancel()  # gives up while queued: dropped at dequeue, its wait still observed
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.sleep(0.05)
        await batcher.stop()
        return waits

    waits = run(scenario())
    assert len(waits) == 3 and 0.15 <= waits[2] < 5 and all(0 <= w < 5 for w in waits)


def test_bad_cost_limit_is_refused_at_construction():
    with pytest.raises(ValueError, match="max_batch_cost"):
        make(FakeBackend(), max_batch_cost=0)


@pytest.mark.parametrize(
    "knobs",
    [
        {"max_wait_s": 10},
        {"max_wait_s": 0},
        {"max_queue": 4, "max_batch_size": 4},
        {"max_batch_cost": 1},
        {"max_concurrent_batches": 1},
    ],
)
def test_knobs_right_at_their_bounds_are_accepted(knobs):
    make(FakeBackend(), **knobs)


def test_knobs_just_past_their_bounds_are_refused():
    with pytest.raises(ValueError, match="max_wait_s"):
        make(FakeBackend(), max_wait_s=10.5)


def test_a_batch_may_cost_exactly_the_limit():
    async def scenario():
        backend = FakeBackend(delay=0.01)
        batcher = make(backend, max_wait_s=0.05, cost=lambda i: i, max_batch_cost=10)
        await asyncio.gather(*(batcher.submit(i) for i in (4, 6)))
        await batcher.stop()
        return backend.batches

    assert run(scenario()) == [[4, 6]]


def test_run_time_is_the_batch_call_duration():
    async def scenario():
        batcher = make(FakeBackend(delay=0.05))
        _, info = await batcher.submit(1)
        await batcher.stop()
        return info

    info = run(scenario())
    assert info.run_s >= 0.05 and info.queue_wait_s >= 0


def test_stop_gives_running_batches_their_grace_then_cancels_them():
    """Within the grace the batch in flight is answered; past it (a backend that takes a
    minute) it is cancelled, its caller told so, and the stop does not wait for the backend."""

    async def scenario(delay: float, grace_s: float):
        batcher = make(FakeBackend(delay=delay), max_batch_size=1, max_wait_s=0)
        running = asyncio.ensure_future(batcher.submit(5))
        await asyncio.sleep(0.05)
        await within(HANG, batcher.stop(grace_s))
        return running.cancelled() or running.result()[0]

    assert run(scenario(delay=0.2, grace_s=5)) == 50
    assert run(scenario(delay=60, grace_s=0.1)) is True


class TimedBackend(FakeBackend):
    """A backend of known cost: ``per_item`` seconds per item, and that cost as its estimate;
    records how many batches were running (itself included) as each started."""

    def __init__(self, per_item: float) -> None:
        super().__init__()
        self.per_item = per_item
        self.running = 0
        self.in_flight_at_start: list[int] = []

    def estimate(self, size: int, cost: int) -> float:
        return self.per_item * size

    async def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.running += 1
        self.in_flight_at_start.append(self.running)
        try:
            await asyncio.sleep(self.per_item * len(items))
            return [item * 10 for item in items]
        finally:
            self.running -= 1


def test_the_concurrency_can_follow_a_function_read_before_each_batch():
    """The dispatcher's allowance (batches per ready worker, which changes as endpoints are
    found) is read again before each batch."""
    allowed = 1

    async def scenario():
        nonlocal allowed
        backend = TimedBackend(per_item=0.05)
        batcher = make(
            backend, max_batch_size=1, max_wait_s=0, max_concurrent_batches=lambda: allowed
        )
        await asyncio.gather(*(batcher.submit(i) for i in range(6)))
        peak_at_one = max(backend.in_flight_at_start)
        allowed = 3
        await asyncio.gather(*(batcher.submit(i) for i in range(12)))
        await batcher.stop()
        return peak_at_one, max(backend.in_flight_at_start)

    assert run(scenario()) == (1, 3)


def test_deadline_policy_sends_a_lone_request_at_once():
    """An idle backend: a lone request goes alone, without waiting for company (max_wait_s)."""

    async def scenario():
        batcher = make(FakeBackend(), max_wait_s=NEVER)
        _, info = await within(HANG, batcher.submit(7))
        await batcher.stop()
        return info

    assert run(scenario()).size == 1


def test_requests_arriving_while_the_backend_is_busy_form_the_next_batch():
    async def scenario():
        backend = TimedBackend(per_item=0.05)
        batcher = make(backend, max_wait_s=1.0, estimate=backend.estimate)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # batch [0] is running now
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 4)]
        await asyncio.gather(first, *rest)
        await batcher.stop()
        return backend.batches

    assert run(scenario()) == [[0], [1, 2, 3]]


def test_with_a_free_slot_a_batch_waits_for_company_only_until_the_backend_is_free():
    """Two batches may be in flight: the second waits while the first runs (that is when
    batching pays), up to its predicted end, not the whole max_wait_s."""

    async def scenario():
        backend = TimedBackend(per_item=0.1)
        batcher = make(
            backend, max_wait_s=NEVER, max_concurrent_batches=2, estimate=backend.estimate
        )
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        second = asyncio.ensure_future(batcher.submit(1))
        await asyncio.sleep(0.02)
        third = asyncio.ensure_future(batcher.submit(2))
        await within(HANG, asyncio.gather(first, second, third))  # max_wait_s not waited out
        await batcher.stop()
        return backend.batches

    assert run(scenario()) == [[0], [1, 2]]


def test_a_waiting_batch_leaves_in_time_for_its_most_urgent_item():
    async def scenario():
        backend = TimedBackend(per_item=0.1)
        batcher = make(
            backend,
            max_batch_size=32,
            max_wait_s=5.0,
            max_concurrent_batches=2,
            estimate=backend.estimate,
        )
        busy = asyncio.ensure_future(batcher.submit_many(list(range(30)))[0])  # one 3 s batch
        await asyncio.sleep(0.05)
        deadline = time.perf_counter() + 0.6
        [urgent] = batcher.submit_many([99], deadline=deadline)
        await urgent
        await busy
        await batcher.stop()
        return backend

    backend = run(scenario())
    assert backend.batches == [list(range(30)), [99]]
    # it left for its deadline while the 3 s batch still ran, not when the backend freed
    assert backend.in_flight_at_start == [1, 2]


def test_a_request_that_cannot_meet_its_deadline_is_refused_at_once():
    async def scenario():
        backend = TimedBackend(per_item=0.05)
        batcher = make(backend, estimate=backend.estimate)
        queued = batcher.submit_many(list(range(12)))  # ~0.6 s of work ahead
        now = time.perf_counter()
        with pytest.raises(DeadlineUnmeetable) as refused:
            batcher.submit_many([100], deadline=now + 0.1)
        depth_after_refusal = batcher.depth
        admitted = batcher.submit_many([101], deadline=now + 5.0)
        await asyncio.gather(*queued, *admitted)
        await batcher.stop()
        return refused.value, depth_after_refusal

    refusal, depth = run(scenario())
    assert depth == 12  # nothing of the refused submission was queued
    assert 0.3 < refusal.retry_after_s < 2.0  # about the 0.6 s of work queued ahead
    assert "deadline" in str(refusal)


@pytest.mark.parametrize(
    "knobs",
    [{"deadline_aware": False}, {}],  # the fixed policy never refuses; no estimate yet: admit
    ids=["fixed-policy", "cost-unknown"],
)
def test_nothing_is_refused_without_a_deadline_policy_or_a_known_cost(knobs):
    async def scenario():
        batcher = make(FakeBackend(delay=0.01), **knobs)
        queued = batcher.submit_many(list(range(12)))
        late = batcher.submit_many([100], deadline=time.perf_counter() + 0.001)
        results = await asyncio.gather(*queued, *late)
        await batcher.stop()
        return results

    assert len(run(scenario())) == 13


def test_batches_are_cut_to_the_sizes_the_runner_computes_without_padding():
    """Five items ready for a runner of buckets 1, 2, 4, 8: it would pad five to eight and do
    the work of eight. Four go now; the fifth opens the next batch, first, with what came."""

    async def scenario():
        backend = TimedBackend(per_item=0.05)
        batcher = make(backend, max_batch_size=8, max_wait_s=1.0, sizes=lambda: [1, 2, 4, 8])
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # batch [0] runs; five more queue behind it
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 6)]
        answers = await asyncio.gather(first, *rest)
        await batcher.stop()
        return backend.batches, answers

    batches, answers = run(scenario())
    assert batches == [[0], [1, 2, 3, 4], [5]]
    assert [value for value, _ in answers] == [0, 10, 20, 30, 40, 50]
    assert [info.size for _, info in answers] == [1, 4, 4, 4, 4, 1]


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ((), [[0], [1, 2, 3, 4, 5]]),  # not known yet: nothing is cut
        ((2, 4, 8), [[0], [1, 2, 3, 4], [5]]),  # below the smallest bucket a batch pads anyway
        ((1, 2, 3, 4, 5, 6, 7, 8), [[0], [1, 2, 3, 4, 5]]),
    ],
)
def test_what_is_cut_follows_the_sizes(sizes, expected):
    async def scenario():
        backend = TimedBackend(per_item=0.05)
        batcher = make(backend, max_batch_size=8, max_wait_s=1.0, sizes=lambda: sizes)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, *(batcher.submit(i) for i in range(1, 6)))
        await batcher.stop()
        return backend.batches

    assert run(scenario()) == expected


def test_items_cut_from_a_batch_are_cancelled_by_stop():
    async def scenario():
        backend = FakeBackend(delay=NEVER)
        batcher = make(backend, max_batch_size=8, max_wait_s=0, sizes=lambda: [1, 4])
        futures = batcher.submit_many(list(range(6)))
        await asyncio.sleep(0.05)  # [0, 1, 2, 3] runs; 4 and 5 were cut and wait
        depth = batcher.depth
        await batcher.stop()
        return depth, [f.cancelled() for f in futures]

    depth, cancelled = run(scenario())
    assert depth == 2 and cancelled == [True] * 6

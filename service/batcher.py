"""Dynamic batching: concurrent submissions grouped into one call, each answered on its own future.

After Ray Serve's ``@serve.batch`` and LitServe: independent of HTTP and of the model. Knobs:
``max_batch_size``, ``max_wait_s`` (the longest the first item of a batch waits for company) and,
optionally, a ``cost`` per item with ``max_batch_cost`` (an item that would push a batch past it
starts the next batch instead), and ``sizes``, the batch sizes the runner computes without
padding (a formed batch is cut to the largest it holds, the rest start the next batch: a
runner that pads 5 items to 8 does the work of 8). At most ``max_concurrent_batches`` batches
are in flight (a number, or a function read before each batch: the ready endpoints found so
far); while they are, new items wait in a bounded queue (so batches grow under load), and when
that queue cannot take a submission ``submit_many`` refuses all of it at once with
``QueueFull``, never part of it. A batch's exception reaches every future of that batch and no
other; an item whose caller went away (cancelled) before dispatch is dropped, and after dispatch
its answer is discarded without disturbing the rest of the batch. ``on_dequeue`` sees the queue
wait of every item taken off the queue, answered or abandoned.

Two policies decide how long a batch waits for company:

- fixed (``deadline_aware=False``; TorchServe's, Triton's and Ray's): always ``max_wait_s``
  after its first item.
- deadline-aware (the default): no wait at all while no batch is in flight (an idle backend gains
  nothing from waiting); while one is, wait for more only until the backend is predicted free,
  and never past the moment the batch's most urgent item would miss its deadline. A submission
  whose deadline cannot be met given the work queued ahead is refused at once with
  ``DeadlineUnmeetable``. Predictions come from ``estimate(n, cost)``, the run time a batch of
  ``n`` items of that total ``cost`` most likely stays under (``None``: not known yet, so
  nothing is refused and the wait is ``max_wait_s``): the queue ahead is predicted at its own
  cost, so one caller's costly items weigh on the predictions only while they are queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(Exception):
    """The batcher holds ``max_queue`` items already; the caller should retry later."""


class DeadlineUnmeetable(Exception):
    """The work queued ahead would answer this submission after its deadline."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BatchSizeMismatch(RuntimeError):
    """The batch function returned a different number of results than it was given."""


@dataclass
class BatchInfo:
    """What a caller learns about the batch its item travelled in (for metrics and timing)."""

    size: int
    queue_wait_s: float
    run_s: float


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: asyncio.Future[tuple[R, BatchInfo]]
    deadline: float = math.inf  # time.perf_counter() by which its answer is useful
    enqueued: float = field(default_factory=time.perf_counter)


SLOT_RECHECK_S = 0.5
"""How soon a batch waiting for a slot sees a larger allowance when no batch ends meanwhile."""


class Batcher(Generic[T, R]):
    def __init__(
        self,
        run_batch: Callable[[list[T]], Awaitable[Sequence[R]]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        max_concurrent_batches: int | Callable[[], int] = 1,
        cost: Callable[[T], int] = lambda _: 1,
        max_batch_cost: int | None = None,
        on_dequeue: Callable[[float], None] = lambda _: None,
        deadline_aware: bool = True,
        estimate: Callable[[int, int], float | None] = lambda _n, _cost: None,
        sizes: Callable[[], Sequence[int]] = tuple,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if not 0 <= max_wait_s <= 10:
            raise ValueError(f"max_wait_s must be in [0, 10] seconds, got {max_wait_s}")
        if max_queue < max_batch_size:
            raise ValueError(
                f"max_queue ({max_queue}) must be >= max_batch_size ({max_batch_size})"
            )
        if isinstance(max_concurrent_batches, int) and max_concurrent_batches < 1:
            raise ValueError(f"max_concurrent_batches must be >= 1, got {max_concurrent_batches}")
        if max_batch_cost is not None and max_batch_cost < 1:
            raise ValueError(f"max_batch_cost must be >= 1, got {max_batch_cost}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.cost = cost
        self.max_batch_cost = max_batch_cost
        self.on_dequeue = on_dequeue
        self.deadline_aware = deadline_aware
        self.estimate = estimate
        self.sizes = sizes
        self._concurrency = (
            max_concurrent_batches
            if callable(max_concurrent_batches)
            else lambda: max_concurrent_batches
        )
        self.name = name
        self._queue: asyncio.Queue[_Pending[T, R]] = asyncio.Queue()
        self._carried: deque[_Pending[T, R]] = deque()  # taken off the queue: the next batch's
        self._worker: asyncio.Task[None] | None = None
        # -> (started, size, cost)
        self._running: dict[asyncio.Task[None], tuple[float, int, int]] = {}
        self._waiting_cost = 0  # of the items ``depth`` counts
        self._slot_freed = asyncio.Event()

    @property
    def max_concurrent_batches(self) -> int:
        """Batches allowed in flight now (at least one)."""
        return max(1, self._concurrency())

    @property
    def depth(self) -> int:
        """Items waiting to be batched."""
        return self._queue.qsize() + len(self._carried)

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._loop(), name=f"{self.name}-loop")

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop taking batches: items still queued fail with CancelledError, batches already
        running get ``grace_s`` to finish, then are cancelled too. A server stops its batchers
        after its own graceful shutdown, when every caller was answered or given up on: waiting
        longer on a slow backend would only hold the exit past the grace."""
        if self._worker is not None:
            self._worker.cancel()
            if self._running:
                await asyncio.wait(list(self._running), timeout=grace_s)
            for running in self._running:
                running.cancel()
            await asyncio.gather(self._worker, *self._running, return_exceptions=True)
            self._worker = None
        while self._carried:
            self._carried.popleft().future.cancel()
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()

    def submit_many(
        self, items: Sequence[T], deadline: float = math.inf
    ) -> list[asyncio.Future[tuple[R, BatchInfo]]]:
        """Queue all of ``items`` or none (no await between the checks and the queueing, so
        concurrent callers cannot overfill the queue); await each future for its own result.
        ``deadline``: the ``time.perf_counter()`` after which nobody waits for the answers."""
        if self.depth + len(items) > self.max_queue:
            raise QueueFull(
                f"{self.name}: {self.depth} items queued, {len(items)} more would exceed "
                f"the limit of {self.max_queue}"
            )
        cost = sum(self.cost(item) for item in items)
        if self.deadline_aware and deadline < math.inf:
            finish = self.predicted_finish(len(items), cost)
            if finish is not None and finish > deadline:
                now = time.perf_counter()
                raise DeadlineUnmeetable(
                    f"{self.name}: the work queued ahead would answer in "
                    f"{(finish - now) * 1000:.0f} ms, past the deadline in "
                    f"{max(deadline - now, 0) * 1000:.0f} ms",
                    finish - now,
                )
        self.start()
        loop = asyncio.get_running_loop()
        pending = [_Pending[T, R](item, loop.create_future(), deadline) for item in items]
        for entry in pending:
            self._queue.put_nowait(entry)
        self._waiting_cost += cost
        return [entry.future for entry in pending]

    async def submit(self, item: T) -> tuple[R, BatchInfo]:
        """Queue ``item`` and wait for its own result (and the batch it went in)."""
        [future] = self.submit_many([item])
        return await future

    def _busy_until(self) -> list[float] | None:
        """Predicted end of each batch in flight; ``None`` while their cost is not known."""
        ends = []
        for started, size, cost in self._running.values():
            if (run := self.estimate(size, cost)) is None:
                return None
            ends.append(started + run)
        return ends

    def predicted_finish(self, extra: int, extra_cost: int = 0) -> float | None:
        """When ``extra`` items of ``extra_cost`` queued now would be answered: the queue ahead
        and then them, in batches of ``max_batch_size`` sharing the queue's cost evenly, each
        started on the first of ``max_concurrent_batches`` slots to come free (the batches in
        flight hold theirs until their predicted end)."""
        ends = self._busy_until()
        if ends is None:
            return None
        items = self.depth + extra
        per_item = (self._waiting_cost + extra_cost) / items if items else 0.0
        full, rest = divmod(items, self.max_batch_size)
        sizes = [self.max_batch_size] * full + ([rest] if rest else [])
        runs: dict[int, float] = {}
        for size in set(sizes):  # each size estimated once, however deep the queue
            if (run := self.estimate(size, round(per_item * size))) is None:
                return None
            runs[size] = run
        now = time.perf_counter()
        slots = [max(end, now) for end in ends] + [now] * (self.max_concurrent_batches - len(ends))
        heapq.heapify(slots)
        finish = now
        for size in sizes:
            finish = heapq.heappop(slots) + runs[size]
            heapq.heappush(slots, finish)
        return finish

    def _wait_until(self, batch: list[_Pending[T, R]], formed: float) -> float:
        """The latest moment this batch may still wait for company."""
        latest = formed + self.max_wait_s
        if not self.deadline_aware:
            return latest
        if not self._running:
            return 0.0  # an idle backend gains nothing from waiting
        if ends := self._busy_until():
            latest = min(latest, min(ends))  # a batch in flight is predicted done
        cost = sum(self.cost(p.item) for p in batch)
        if (run := self.estimate(len(batch) + 1, cost + cost // len(batch))) is not None:
            latest = min(latest, min(p.deadline for p in batch) - run)
        return latest

    async def _take(self, timeout_s: float | None) -> _Pending[T, R]:
        """The next item (``timeout_s`` 0: only one already waiting); reports its queue wait."""
        if self._carried:
            pending = self._carried.popleft()
            self._waiting_cost -= self.cost(pending.item)
            return pending
        if timeout_s is None:
            pending = await self._queue.get()
        elif timeout_s <= 0:
            pending = self._queue.get_nowait()
        else:
            pending = await asyncio.wait_for(self._queue.get(), timeout_s)
        self._waiting_cost -= self.cost(pending.item)
        self.on_dequeue(time.perf_counter() - pending.enqueued)
        return pending

    async def _loop(self) -> None:
        while True:
            await self._free_slot()  # before forming the next batch
            batch = [await self._take(None)]
            cost = self.cost(batch[0].item)
            formed = time.perf_counter()
            while len(batch) < self.max_batch_size:
                try:
                    pending = await self._take(
                        self._wait_until(batch, formed) - time.perf_counter()
                    )
                except (asyncio.QueueEmpty, TimeoutError):
                    break
                cost += self.cost(pending.item)
                if self.max_batch_cost is not None and cost > self.max_batch_cost:
                    self._carried.append(pending)  # too costly to join: it opens the next batch
                    self._waiting_cost += self.cost(pending.item)
                    break
                batch.append(pending)
            live = self._fit([p for p in batch if not p.future.done()])  # gave up: dropped
            if not live:
                continue
            task = asyncio.create_task(self._run(live))
            live_cost = sum(self.cost(p.item) for p in live)
            self._running[task] = (time.perf_counter(), len(live), live_cost)
            task.add_done_callback(self._batch_done)

    def _fit(self, batch: list[_Pending[T, R]]) -> list[_Pending[T, R]]:
        """Cut to the largest of ``sizes`` (what the runner computes without padding) the batch
        holds; the rest open the next batch, in order. A runner that pads 5 images to 8
        computes 8: 4 now and 1 with the next arrivals cost 5."""
        fitting = [size for size in self.sizes() if size <= len(batch)]
        if not fitting or (keep := max(fitting)) == len(batch):
            return batch
        self._carried.extendleft(reversed(batch[keep:]))
        self._waiting_cost += sum(self.cost(p.item) for p in batch[keep:])
        return batch[:keep]

    async def _free_slot(self) -> None:
        """Until fewer batches run than allowed; the allowance is read again when a batch ends
        and every ``SLOT_RECHECK_S`` (it grows when an endpoint is found, with nothing ending)."""
        while len(self._running) >= self.max_concurrent_batches:
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):  # not wait_for: 3.11's may lose a cancel
                async with asyncio.timeout(SLOT_RECHECK_S):
                    await self._slot_freed.wait()

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._slot_freed.set()

    async def _run(self, batch: list[_Pending[T, R]]) -> None:
        started = time.perf_counter()
        try:
            results = await self.run_batch([p.item for p in batch])
            if len(results) != len(batch):
                raise BatchSizeMismatch(
                    f"{self.name}: {len(batch)} items in, {len(results)} results out"
                )
        except asyncio.CancelledError:  # stopped: its callers are not left waiting
            for pending in batch:
                pending.future.cancel()
            raise
        except Exception as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
            return
        finished = time.perf_counter()
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():  # cancelled callers are skipped, the rest still answered
                info = BatchInfo(len(batch), started - pending.enqueued, finished - started)
                pending.future.set_result((result, info))

"""The machine's CPUs as its workers share them.

TorchServe runs one Python process per model. Splitting the CPUs between them (one thread each
on two CPUs) made a model that was the only one receiving traffic compute at half the machine's
speed while the other half idled. Instead every worker's batch runs on all the CPUs, and CPU
slots, files locked while a batch computes, let at most ``CPUs // threads`` batches compute at
once across the processes that share them: an idle model's cores go to the busy one, and two
busy models take turns instead of oversubscribing the cores (oversubscribed OpenMP threads spin
against each other and lengthen every batch).
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SLOTS_DIR_ENV = "WORKER_CPU_SLOTS_DIR"
"""Where the slot files of the workers that share these CPUs are (set by the launcher)."""
SLOTS_ENV = "WORKER_CPU_SLOTS"
"""How many batches may compute at once on these CPUs."""
POLL_S = 0.002
"""How often a batch waiting for one of several slots tries them again."""


def available_cpus(pinned: frozenset[int] | None = None) -> int:
    """CPUs this process (or one ``pinned`` to those) may use: its affinity mask, capped by a
    cgroup v2 CPU quota (a container's ``cpus`` / a pod's CPU limit, which ``os.cpu_count()``
    does not see)."""
    cpus = len(pinned or os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus


class CpuSlots:
    """At most ``count`` batches computing at once among the processes sharing ``directory``:
    each holds an exclusive ``flock`` on one slot file while it computes, which the kernel
    releases if the process dies (a killed worker leaves no slot taken)."""

    def __init__(self, directory: Path, count: int) -> None:
        if count < 1:
            raise ValueError(f"CPU slots must be at least 1, got {count}")
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.count = count
        self._files = [
            os.open(directory / f"slot-{index}", os.O_RDWR | os.O_CREAT) for index in range(count)
        ]
        self._local = threading.Lock()  # flock is per open file: one holder per process

    @classmethod
    def from_environment(cls) -> CpuSlots | None:
        """The slots the launcher set up for this worker, or None (not shared: no waiting)."""
        directory = os.environ.get(SLOTS_DIR_ENV)
        return cls(Path(directory), int(os.environ.get(SLOTS_ENV, "1"))) if directory else None

    def environment(self) -> dict[str, str]:
        """What a worker process needs to share these slots."""
        return {SLOTS_DIR_ENV: str(self.directory), SLOTS_ENV: str(self.count)}

    @staticmethod
    def _take(fd: int) -> bool:
        """The slot ``fd`` if no one holds it, without waiting."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _try(self) -> int | None:
        return next((fd for fd in self._files if self._take(fd)), None)

    def computing(self) -> int:
        """How many slots a batch holds now, seen from a process that computes nothing (the
        launcher draining): each slot tried without waiting and let go at once."""
        held = 0
        for fd in self._files:
            if self._take(fd):
                fcntl.flock(fd, fcntl.LOCK_UN)
            else:
                held += 1
        return held

    @contextmanager
    def held(self) -> Iterator[float]:
        """A slot, waited for as long as it takes (the holder's batch ends, or it dies); yields
        the seconds waited."""
        started = time.perf_counter()
        with self._local:
            fd = self._try()
            while fd is None:
                if self.count == 1:  # one slot: the kernel wakes us when it is released
                    fd = self._files[0]
                    fcntl.flock(fd, fcntl.LOCK_EX)
                    break
                time.sleep(POLL_S)
                fd = self._try()
            try:
                yield time.perf_counter() - started
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

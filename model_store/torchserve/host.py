"""What this host offers a TorchServe: free loopback ports, the CPUs a process may use, and the
threads each worker gets so that together they never oversubscribe them."""

from __future__ import annotations

import os
import socket
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_ports(count: int) -> list[int]:
    """Loopback ports free at this moment, for servers started on demand."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


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


def threads_per_worker(workers: int, pinned: frozenset[int] | None = None) -> int:
    """Intra-op threads per worker so that all workers together never oversubscribe the CPUs
    (oversubscribed OpenMP threads spin against each other and lengthen every batch)."""
    return max(1, available_cpus(pinned) // max(1, workers))

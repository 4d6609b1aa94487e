"""What this host offers a TorchServe: Java, free loopback ports, the CPUs a process may use and
the threads each worker gets so that together they never oversubscribe them, and whether a
process group still runs."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

LOOPBACK = "127.0.0.1"
MIN_JAVA = 17


class TorchServeError(RuntimeError):
    """TorchServe could not be started, or a model did not become ready."""


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


def check_java() -> str:
    """The Java version string; raises with install advice when Java is missing or too old."""
    java = shutil.which("java")
    if java is None:
        raise TorchServeError(
            f"TorchServe needs Java {MIN_JAVA}+ and `java` is not on PATH. Install it "
            "(Debian/Ubuntu: apt-get install -y openjdk-17-jre-headless) or run the gateway "
            "with the inprocess backend."
        )
    output = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    major = int(match[1]) if match else 0
    if major == 1 and match and match[2]:  # "1.8" style
        major = int(match[2])
    if major < MIN_JAVA:
        raise TorchServeError(f"TorchServe needs Java {MIN_JAVA}+, found: {output.strip()[:200]}")
    return output.splitlines()[0] if output else "java"


def group_alive(group: int) -> bool:
    """Whether a process of this group still runs (zombies waiting to be reaped do not count)."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: a signal 0 to the group answers
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False

"""What this host offers a TorchServe: Java, free loopback ports, and whether a process group
still runs (the CPUs its workers share: ``model_store.worker.cpus``)."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import subprocess
from pathlib import Path

LOOPBACK = "127.0.0.1"
MIN_JAVA = 17


class TorchServeError(RuntimeError):
    """TorchServe could not be started, or a model did not become ready."""


PORT_RANGE_ENV = "FREE_PORT_RANGE"
"""``LOW-HIGH``: where ``free_ports`` looks (unset: wherever the kernel hands out a port).
Processes that start servers side by side (the test suite's parallel workers) each get a range
of their own: a port one found free and has not bound yet is never another's find."""


def free_ports(count: int) -> list[int]:
    """Loopback ports free at this moment, for servers started on demand."""
    if span := os.environ.get(PORT_RANGE_ENV):
        return _free_ports_in(count, *map(int, span.split("-")))
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _free_ports_in(count: int, low: int, high: int) -> list[int]:
    """``count`` ports of ``low``..``high`` that bind now, tried in random order."""
    candidates = random.sample(range(low, high + 1), high + 1 - low)
    ports: list[int] = []
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise OSError(f"fewer than {count} free ports in {low}-{high}")


def is_loopback(host: str) -> bool:
    return host == "localhost" or host.startswith("127.") or host == "::1"


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

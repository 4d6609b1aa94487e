"""The CPUs the workers share: slots held across real processes, released when a holder dies,
and the cgroup quota and affinity that size them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from model_store.worker import cpus
from model_store.worker.cpus import CpuSlots, available_cpus

REPO = Path(__file__).resolve().parents[3]
HOLD = """
import sys, time
from pathlib import Path
from model_store.worker.cpus import CpuSlots
slots = CpuSlots(Path(sys.argv[1]), int(sys.argv[2]))
with slots.held():
    print("held", flush=True)
    time.sleep(float(sys.argv[3]))
"""


def holder(directory: Path, count: int, seconds: float) -> subprocess.Popen[str]:
    """Another process holding one of the slots for ``seconds`` (returned once it holds it)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory), str(count), str(seconds)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_batch_waits_while_another_process_computes(tmp_path):
    other = holder(tmp_path, 1, 1.0)
    with CpuSlots(tmp_path, 1).held() as waited:
        pass
    assert waited > 0.8  # until the other one's batch ended
    other.wait()


def test_a_killed_holder_leaves_no_slot_taken(tmp_path):
    other = holder(tmp_path, 1, 60.0)
    other.send_signal(signal.SIGKILL)
    started = time.perf_counter()
    with CpuSlots(tmp_path, 1).held():
        assert time.perf_counter() - started < 5  # the kernel released its lock
    other.wait()


def test_two_slots_let_two_batches_compute_at_once(tmp_path):
    other = holder(tmp_path, 2, 5.0)
    with CpuSlots(tmp_path, 2).held() as waited:
        assert waited < 1 and other.poll() is None  # beside it, not after it
    other.kill()
    other.wait()


def test_slots_come_from_the_launchers_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(cpus.SLOTS_DIR_ENV, raising=False)
    assert CpuSlots.from_environment() is None  # not shared: nothing to wait for
    monkeypatch.setenv(cpus.SLOTS_DIR_ENV, str(tmp_path))
    monkeypatch.setenv(cpus.SLOTS_ENV, "3")
    slots = CpuSlots.from_environment()
    assert slots is not None and slots.count == 3
    assert slots.environment() == {cpus.SLOTS_DIR_ENV: str(tmp_path), cpus.SLOTS_ENV: "3"}
    with pytest.raises(ValueError, match="at least 1"):
        CpuSlots(tmp_path, 0)


def test_available_cpus_are_the_affinity_or_the_cpus_pinned():
    assert available_cpus(frozenset({0})) == 1
    if not Path("/sys/fs/cgroup/cpu.max").exists():  # no quota on this process's cgroup
        assert available_cpus() == len(os.sched_getaffinity(0))


def test_an_observer_counts_the_slots_held_and_takes_none(tmp_path):
    """What the draining launcher sees: each held slot, and after looking, every slot free
    for the workers again."""
    worker, observer = CpuSlots(tmp_path, 2), CpuSlots(tmp_path, 2)
    assert observer.computing() == 0
    with worker.held():
        assert observer.computing() == 1
        with CpuSlots(tmp_path, 2).held():
            assert observer.computing() == 2
    assert observer.computing() == 0
    assert CpuSlots(tmp_path, 2).computing() == 0  # seen by another: the observer kept none

"""The worker container's main process (``python -m model_store serve --drain-seconds``, under
tini) against a real TorchServe: on SIGTERM a batch already computing is answered (TorchServe's
own frontend would reset it), the drain ends when nothing is in flight (not when its bound
runs out), then every process of the worker exits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from contract.protocol import input_field
from model_store.demo.synthetic import encode
from model_store.torchserve.host import free_ports
from model_store.torchserve.launcher import TorchServe
from model_store.worker.cpus import CpuSlots

from ..service.test_launcher import listening, processes_under

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DRAIN_SECONDS = 60
"""The drain's bound, far above the batch's time: the test sees the drain end by itself."""


def computing(run_dir: Path) -> int:
    """Batches computing in the worker now: its CPU slots held (``model_store.worker.cpus``)."""
    slots = run_dir / "cpu-slots"
    return CpuSlots(slots, len(list(slots.glob("slot-*")))).computing()


def test_sigterm_drains_the_running_batch_then_stops_everything(tiny_archives, tmp_path):
    inference, management, metrics, *grpc = free_ports(5)
    server = TorchServe(
        ["se_resnet50"], tiny_archives, tmp_path / "run", "127.0.0.1", inference, management
    )
    command = [
        sys.executable, "-m", "model_store", "serve", "--models", "se_resnet50",
        "--archives", str(tiny_archives), "--run-dir", str(server.run_dir),
        "--inference-port", str(inference), "--management-port", str(management),
        "--metrics-port", str(metrics), "--grpc-ports", ",".join(map(str, grpc)),
        "--drain-seconds", str(DRAIN_SECONDS),
    ]  # fmt: skip
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    answer: dict[str, object] = {}
    try:
        deadline = time.monotonic() + 300
        while b"TorchServe ready" not in (tmp_path / "worker.log").read_bytes():
            assert worker.poll() is None and time.monotonic() < deadline, "worker never ready"
            time.sleep(0.5)
        rng = np.random.default_rng(0)
        big = encode(Image.fromarray(rng.integers(0, 255, (2000, 3000, 3), np.uint8)), "JPEG")
        files = [(input_field("image", i), (str(i), big, "image/jpeg")) for i in range(3)]

        def send() -> None:
            try:
                answer["response"] = httpx.post(
                    f"{server.inference_url}/predictions/se_resnet50",
                    files=files,
                    headers=server.headers("inference"),
                    timeout=60,
                )
            except httpx.HTTPError as exc:
                answer["response"] = exc

        in_flight = threading.Thread(target=send)
        in_flight.start()
        while not computing(server.run_dir):  # the batch has reached its worker's CPUs
            assert in_flight.is_alive(), answer
            time.sleep(0.005)
        stopped_at = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        in_flight.join(60)
        answered_after = time.monotonic() - stopped_at
        worker.wait(DRAIN_SECONDS + 60)
        took = time.monotonic() - stopped_at
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        log.close()
        leftovers = processes_under(tmp_path)
        for pid in leftovers:  # never leak a TorchServe into the rest of the suite
            os.kill(pid, signal.SIGKILL)
    response = answer["response"]
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200 and len(response.json()["results"]) == 3
    assert leftovers == [], (tmp_path / "worker.log").read_text()[-2000:]
    assert not listening(inference) and not listening(management)
    # the batch was computing at SIGTERM, was answered, and only then did the worker stop; it
    # stopped because nothing was in flight, well before the drain's bound
    assert 0 < answered_after <= took < DRAIN_SECONDS / 2, (answered_after, took)
    assert "drained in" in (tmp_path / "worker.log").read_text()

"""``python -m service --start-torchserve`` (what ``make serve`` runs) stops everything it
started on Ctrl-C and on SIGTERM (systemd, ``docker stop``, CI runners): no TorchServe frontend
or worker is left holding its ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from model_store.torchserve.host import free_ports

pytestmark = pytest.mark.slow

STOP_WITHIN_S = 60


def processes_under(directory: Path) -> list[int]:
    """PIDs whose working directory is inside ``directory`` (TorchServe runs in its run dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_launcher_stops_torchserve_on_signal(tiny_archives, tmp_path, signum):
    inference, management, metrics, gateway = free_ports(4)
    env = os.environ | {
        "GATEWAY_MODELS": "se_resnet50",
        "GATEWAY_ARCHIVE_DIR": str(tiny_archives),
        "GATEWAY_TORCHSERVE_INFERENCE_URL": f"http://127.0.0.1:{inference}",
        "GATEWAY_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{management}",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    command = [
        sys.executable, "-m", "service", "--start-torchserve", "--port", str(gateway),
        "--torchserve-metrics-port", str(metrics),
    ]  # fmt: skip
    log = (tmp_path / "launcher.log").open("wb")
    launcher = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert launcher.poll() is None, (tmp_path / "launcher.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "gateway never became ready"
            try:
                if httpx.get(f"http://127.0.0.1:{gateway}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert processes_under(tmp_path / ".run"), "TorchServe should run in its run directory"
        assert listening(inference) and listening(management)
        launcher.send_signal(signum)
        launcher.wait(STOP_WITHIN_S)  # raises if it is still running then
        if signum == signal.SIGTERM:  # a clean stop (model_store.signals), as the worker's
            assert launcher.returncode == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
        log.close()
    leftovers = processes_under(tmp_path / ".run")
    for pid in leftovers:  # never leak them into the rest of the suite
        os.kill(pid, signal.SIGKILL)
    assert leftovers == [], (tmp_path / "launcher.log").read_text()[-3000:]
    assert not listening(inference) and not listening(management) and not listening(gateway)

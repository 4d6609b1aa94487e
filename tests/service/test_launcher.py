"""``python -m service --start-torchserve`` (what ``make serve`` runs) stops everything it
started on Ctrl-C and on SIGTERM (systemd, ``docker stop``, CI runners), also while its models
still load: no TorchServe frontend or worker is left holding its ports. Its supervisor starts a
TorchServe that died again; without Java it serves the same archives in process."""

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

from model_store.demo.synthetic import encode, make_images
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


class Launched:
    """``python -m service --start-torchserve`` in ``directory`` (its ``.run`` there), its
    output in ``launcher.log``."""

    def __init__(self, archives: Path, directory: Path, **env: str) -> None:
        self.inference, self.management, metrics, self.gateway = free_ports(4)
        self.directory = directory
        environment = (
            os.environ
            | {
                "GATEWAY_MODELS": "se_resnet50",
                "GATEWAY_ARCHIVE_DIR": str(archives),
                "GATEWAY_TORCHSERVE_INFERENCE_URL": f"http://127.0.0.1:{self.inference}",
                "GATEWAY_TORCHSERVE_MANAGEMENT_URL": f"http://127.0.0.1:{self.management}",
                "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            }
            | env
        )
        command = [
            sys.executable, "-m", "service", "--start-torchserve", "--port", str(self.gateway),
            "--torchserve-metrics-port", str(metrics),
        ]  # fmt: skip
        self.log_path = directory / "launcher.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            command, cwd=directory, env=environment, stdout=self._log, stderr=subprocess.STDOUT
        )

    def log(self) -> str:
        return self.log_path.read_text()[-3000:]

    def ready(self) -> bool:
        try:
            return (
                httpx.get(f"http://127.0.0.1:{self.gateway}/readyz", timeout=2).status_code == 200
            )
        except httpx.HTTPError:
            return False

    def wait_until(self, condition, what: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, f"{what} never happened:\n{self.log()}"
            time.sleep(0.2)

    def frontends(self) -> list[int]:
        """The TorchServe frontends (Java) it runs."""
        return [
            pid
            for pid in processes_under(self.directory / ".run")
            if b"org.pytorch.serve.ModelServer" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]

    def stop(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)
        self.process.wait(STOP_WITHIN_S)  # raises if it is still running then

    def close(self) -> list[int]:
        """Kills what is left; returns what was (never leaked into the rest of the suite)."""
        if self.process.poll() is None:
            self.process.kill()
        self._log.close()
        leftovers = processes_under(self.directory / ".run")
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
        return leftovers


def classify(launched: Launched) -> httpx.Response:
    image = encode(make_images(1, seed=4)[0][0], "JPEG")
    return httpx.post(
        f"http://127.0.0.1:{launched.gateway}/v1/models/se_resnet50/classify",
        content=image,
        headers={"Content-Type": "image/jpeg"},
        timeout=60,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_launcher_stops_torchserve_on_signal(tiny_archives, tmp_path, signum):
    launched = Launched(tiny_archives, tmp_path)
    try:
        launched.wait_until(launched.ready, "the gateway ready")
        assert processes_under(tmp_path / ".run"), "TorchServe should run in its run directory"
        assert listening(launched.inference) and listening(launched.management)
        launched.stop(signum)
        if signum == signal.SIGTERM:  # a clean stop (model_store.signals), as the worker's
            assert launched.process.returncode == 0
    finally:
        leftovers = launched.close()
    assert leftovers == [], launched.log()
    for port in (launched.inference, launched.management, launched.gateway):
        assert not listening(port)


def test_a_stop_while_the_models_still_load_leaves_nothing_behind(tiny_archives, tmp_path):
    launched = Launched(tiny_archives, tmp_path)
    try:
        launched.wait_until(launched.frontends, "TorchServe's frontend started")
        assert not launched.ready()  # its models are still loading
        launched.stop()
        assert launched.process.returncode == 0
    finally:
        leftovers = launched.close()
    assert leftovers == [], launched.log()
    assert not listening(launched.inference) and not listening(launched.management)


def test_the_supervisor_starts_a_torchserve_that_died_again(tiny_archives, tmp_path):
    """``make serve``'s TorchServe frontend killed: the supervisor starts it again, and the
    gateway serves from the new one by itself (new keys read from the new key file)."""
    launched = Launched(tiny_archives, tmp_path)
    try:
        launched.wait_until(launched.ready, "the gateway ready")
        assert classify(launched).status_code == 200
        [first] = launched.frontends()
        os.kill(first, signal.SIGKILL)
        launched.wait_until(lambda: launched.frontends() not in ([], [first]), "a new frontend")
        launched.wait_until(lambda: classify(launched).status_code == 200, "answers again")
        # said once the new frontend is warm, which may end after the first answers
        back = "TorchServe is back (restart 1)"
        launched.wait_until(lambda: back in launched.log_path.read_text(), "the restart counted")
        launched.stop()
    finally:
        leftovers = launched.close()
    assert leftovers == [], launched.log()


def test_without_java_the_launcher_serves_the_archives_in_process(tiny_archives, tmp_path):
    no_java = tmp_path / "bin"
    no_java.mkdir()
    launched = Launched(tiny_archives, tmp_path, PATH=str(no_java))
    try:
        launched.wait_until(launched.ready, "the gateway ready")
        answer = classify(launched)
        assert answer.status_code == 200 and answer.json()["results"][0]["predictions"]
        assert not processes_under(tmp_path / ".run")  # no TorchServe
        assert "falling back to the inprocess backend" in launched.log_path.read_text()
        launched.stop()
    finally:
        leftovers = launched.close()
    assert leftovers == []

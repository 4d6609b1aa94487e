"""A worker other hosts reach (``python -m model_store serve --host 0.0.0.0`` with the container's
TorchServe settings: token authorization off), called as a neighbour would: the workflow,
registration, scaling and key calls of TorchServe's management API are refused and nothing is
fetched; the model descriptions the gateway reads still answer. Against a real TorchServe."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from contract.protocol import model_ready
from model_store.torchserve.host import free_ports
from model_store.torchserve.management_gate import ManagementGate, _GateHandler, readable

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
CONTAINER_CONFIG = REPO / "deploy" / "docker" / "torchserve.properties"


class Fetches(ThreadingHTTPServer):
    """A server a hostile request would make TorchServe fetch from; counts what it is asked
    (and answers ``status``)."""

    def __init__(self, status: int = 404) -> None:
        self.paths: list[str] = []
        fetches = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fetches.paths.append(self.path)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture(scope="module")
def worker(tiny_archives, tmp_path_factory) -> Iterator[dict[str, str]]:
    inference, management, metrics, grpc_inference, grpc_management = free_ports(5)
    run_dir = tmp_path_factory.mktemp("gated") / "run"
    command = [
        sys.executable, "-m", "model_store", "serve", "--host", "0.0.0.0",
        "--models", "eca_resnet50", "--archives", str(tiny_archives),
        "--config", str(CONTAINER_CONFIG), "--run-dir", str(run_dir),
        "--inference-port", str(inference), "--management-port", str(management),
        "--metrics-port", str(metrics), "--grpc-ports", f"{grpc_inference},{grpc_management}",
    ]  # fmt: skip
    log = run_dir.parent / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=os.environ.copy()
        )
    try:
        deadline = time.monotonic() + 600
        while "TorchServe ready" not in log.read_text():
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "TorchServe did not get ready"
            time.sleep(0.5)
        config = (run_dir / "config.properties").read_text()
        yield {
            "gate": f"http://127.0.0.1:{management}",
            "inference": f"http://127.0.0.1:{inference}",
            "internal": re.search(r"^management_address=(.*)$", config, re.M).group(1),
            "config": config,
        }
    finally:
        process.terminate()
        process.wait(60)


HOSTILE_CALLS = [
    ("POST", "/workflows", {"url": "{fetch}/x.war"}),
    ("POST", "/models", {"url": "{fetch}/y.mar", "initial_workers": "1"}),
    ("PUT", "/models/eca_resnet50", {"min_worker": "0", "max_worker": "0"}),
    ("DELETE", "/models/eca_resnet50", {}),
    ("POST", "/token", {"type": "inference"}),
]


def send(base: str, method: str, path: str, params: dict[str, str], fetch: str) -> httpx.Response:
    query = {k: v.format(fetch=fetch) for k, v in params.items()}
    return httpx.request(method, f"{base}{path}", params=query, timeout=30)


def test_a_neighbour_can_read_descriptions_and_nothing_else(worker):
    fetches = Fetches()
    httpx.get(f"{fetches.url}/probe")
    assert fetches.paths == ["/probe"]  # it answers: a fetch would have been seen
    for method, path, params in HOSTILE_CALLS:
        refused = send(worker["gate"], method, path, params, fetches.url)
        assert refused.status_code == 403, (method, path, refused.text)
        assert "read-only" in refused.json()["message"]
    # no sleep needed: TorchServe fetches a registration's URL before it answers, and the gate
    # answers only after TorchServe would have; each refusal above was the gate's own
    assert fetches.paths == ["/probe"]
    description = httpx.get(f"{worker['gate']}/models/eca_resnet50", timeout=30)
    assert description.status_code == 200 and model_ready(description.json()[0])
    customized = httpx.get(
        f"{worker['gate']}/models/eca_resnet50", params={"customized": "true"}, timeout=30
    )
    assert customized.status_code == 200 and "customizedMetadata" in customized.json()[0]
    assert httpx.get(f"{worker['gate']}/models", timeout=30).status_code == 200


def test_torchserve_itself_fetches_no_url_outside_its_archives(worker):
    """Behind the gate too, on loopback: ``allowed_urls`` admits only the archive directory,
    so even a process inside the container cannot make it fetch from the network."""
    fetches = Fetches()
    answer = send(worker["internal"], "POST", "/workflows", {"url": "{fetch}/x.war"}, fetches.url)
    assert answer.status_code >= 400, answer.text
    assert fetches.paths == []  # TorchServe checks allowed_urls, and fetches, before it answers
    assert "allowed_urls=file://" in worker["config"]


def test_only_inference_and_metrics_listen_beyond_loopback(worker):
    config = worker["config"]
    assert re.search(r"^management_address=http://127\.0\.0\.1:", config, re.M)
    assert re.search(r"^grpc_inference_address=127\.0\.0\.1$", config, re.M)
    assert re.search(r"^grpc_management_address=127\.0\.0\.1$", config, re.M)
    assert re.search(r"^inference_address=http://0\.0\.0\.0:", config, re.M)
    files = {"image_0000": ("x", b"\xff\xd8\xff", "image/jpeg")}
    answer = httpx.post(f"{worker['inference']}/predictions/eca_resnet50", files=files, timeout=60)
    assert answer.status_code == 200  # the gateway's path: one error entry for a bad image
    assert answer.json()["results"][0]["error"]["code"] == "undecodable_image"


@pytest.mark.parametrize(
    ("method", "path", "query", "allowed"),
    [
        ("GET", "/models", "", True),
        ("GET", "/models/eca_resnet50", "customized=true", True),
        ("GET", "/models/eca_resnet50", "customized=true&x=1", False),
        ("GET", "/models/eca_resnet50/2.0", "", False),
        ("GET", "/models/../workflows", "", False),
        ("GET", "/workflows", "", False),
        ("GET", "/api-description", "", False),
        ("POST", "/models/eca_resnet50", "", False),
    ],
)
def test_what_the_gate_reads_as_a_description(method, path, query, allowed):
    assert readable(method, path, query) is allowed


def test_the_gate_ignores_proxies_and_drops_idle_connections(monkeypatch):
    """Its forwards went through an ``HTTP_PROXY`` of the environment (503 when that proxy is
    not there; the token to whoever it is when it is), and a connection that sent nothing held
    one of its threads for ever."""
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.setattr(_GateHandler, "timeout", 0.5)
    target = Fetches(status=200)  # TorchServe's loopback management API
    gate = ManagementGate(("127.0.0.1", 0), target.url).start()
    try:
        url = f"http://127.0.0.1:{gate.server_address[1]}"
        with httpx.Client(trust_env=False) as client:
            assert client.get(f"{url}/models").status_code == 200
        assert target.paths == ["/models"]
        with socket.create_connection(("127.0.0.1", gate.server_address[1]), timeout=5) as idle:
            assert idle.recv(1) == b""  # closed by the gate, well before the client's 5 s
    finally:
        gate.stop()
        target.shutdown()

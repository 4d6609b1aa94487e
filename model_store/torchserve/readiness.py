"""Asking a local TorchServe's management API whether its models are ready, as the launcher
does while it starts one (the gateway asks the same question asynchronously, and both read
the answer with ``contract.protocol.model_ready``), and warming its frontend up once they
are."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

from contract.keys import bearer, key_refused
from contract.protocol import TOP_K_FIELD, model_ready

from .host import TorchServeError

if TYPE_CHECKING:
    from .launcher import TorchServe


def describe(server: TorchServe, model: str) -> list[dict[str, Any]] | None:
    """The management API's description of ``model``; None while it cannot answer. A refused
    key is renewed and the question asked once more."""
    for attempt in range(2):
        sent = server.token("management")
        request = urllib.request.Request(
            f"{server.management_url}/models/{model}", headers=bearer(sent)
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if attempt or not key_refused(exc.code, exc.read()):
                return None
            server.recover("management", sent)
        except (urllib.error.URLError, ConnectionError, json.JSONDecodeError):
            return None
    return None


def wait_ready(server: TorchServe, timeout: float, progress: Any) -> dict[str, Any]:
    """Every model's description once each is ready; ``TorchServeError`` when the server
    exits first or ``timeout`` passes (with its log's tail)."""
    deadline = time.monotonic() + timeout
    ready: dict[str, Any] = {}
    last_report = 0.0
    while time.monotonic() < deadline:
        if server.process is None or server.process.poll() is not None:
            raise TorchServeError(
                f"TorchServe exited during start-up; log tail:\n{server.log_tail()}"
            )
        for model in server.models:
            description = None if model in ready else describe(server, model)
            if description and model_ready(description[0]):
                ready[model] = description[0]
        if len(ready) == len(server.models):
            return ready
        if progress and time.monotonic() - last_report > 15:
            waiting = [m for m in server.models if m not in ready]
            progress(f"waiting for TorchServe models to load and warm up: {', '.join(waiting)}")
            last_report = time.monotonic()
        time.sleep(0.5)
    raise TorchServeError(f"models not ready after {timeout:.0f} s; log tail:\n{server.log_tail()}")


FRONTEND_WARMUP_REQUESTS = 1500
"""Requests that warm TorchServe's Java frontend up before traffic: measured on the 2-core AMD
Zen 4 machines, a request that costs the worker 0.3 ms took 8 ms round trip for the first 100,
6.4 ms by the 300th and 2.3 ms after 1,500, as the JVM compiled its hot paths
(``bench/README.md``)."""
FRONTEND_WARMUP_SECONDS = 15.0
"""The most the warm-up may take (4-8 s idle): a server restarted behind a gateway takes
traffic at once, its warm-up requests queue behind real batches, and real traffic warms the
frontend anyway."""


def warm_frontend(
    server: TorchServe,
    requests: int = FRONTEND_WARMUP_REQUESTS,
    max_seconds: float = FRONTEND_WARMUP_SECONDS,
) -> tuple[int, float]:
    """Send up to ``requests`` empty inference requests (no input: the worker answers
    ``{"results": []}`` at once) through the frontend, spread over the models, on one kept-alive
    connection, for at most ``max_seconds``; returns how many were sent and the seconds taken."""
    started = time.perf_counter()
    body = f'--w\r\nContent-Disposition: form-data; name="{TOP_K_FIELD}"\r\n\r\n1\r\n--w--\r\n'
    connection = http.client.HTTPConnection(server.host, server.inference_port, timeout=30)
    sent = 0
    try:
        while sent < requests and time.perf_counter() - started < max_seconds:
            model = server.models[sent % len(server.models)]
            headers = {"Content-Type": "multipart/form-data; boundary=w"}
            connection.request(
                "POST", f"/predictions/{model}", body.encode(), headers | server.headers()
            )
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise TorchServeError(f"warming the frontend up: HTTP {response.status}")
            sent += 1
    finally:
        connection.close()
    return sent, time.perf_counter() - started

"""A read-only door to TorchServe's management API, for workers that other hosts reach.

TorchServe's management API registers models and workflows from URLs, scales workers to zero
and issues keys. ``enable_model_api=false`` does not cover the workflow API in TorchServe 0.12
(``POST /workflows?url=...`` fetched any URL into the model store), and in a container token
authorization is off (its keys are written inside the container, where no gateway can read
them). So a worker reachable by neighbours runs TorchServe's management API on loopback and puts
this gate on the management port: it forwards what the gateway asks, the model descriptions
(``GET /models`` and ``GET /models/{name}``, optionally ``?customized=true``), and answers
everything else 403 without forwarding it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

READABLE_PATH = re.compile(r"/models(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
READABLE_QUERY = ({}, {"customized": ["true"]}, {"customized": ["false"]})
FORWARD_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 10.0
"""A connection that sends nothing for this long is closed (each holds a thread)."""
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Forwards to TorchServe on loopback: never through an ``HTTP_PROXY`` of the environment."""


class ManagementGate(ThreadingHTTPServer):
    """Listens on ``address`` and forwards readable requests to ``target`` (TorchServe's own
    management address, on loopback)."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], target: str) -> None:
        super().__init__(address, _GateHandler)
        self.target = target.rstrip("/")
        self._thread = threading.Thread(target=self.serve_forever, name="management-gate")

    def start(self) -> ManagementGate:
        self._thread.start()
        log.info("management gate on %s:%d -> %s", *self.server_address[:2], self.target)
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


def readable(method: str, path: str, query: str) -> bool:
    """Whether a request only reads model descriptions."""
    return (
        method == "GET"
        and READABLE_PATH.fullmatch(path) is not None
        and urllib.parse.parse_qs(query, keep_blank_values=True) in READABLE_QUERY
    )


class _GateHandler(BaseHTTPRequestHandler):
    server: ManagementGate
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        if not readable("GET", url.path, url.query):
            self._refuse()
            return
        request = urllib.request.Request(
            f"{self.server.target}{url.path}" + (f"?{url.query}" if url.query else ""),
            headers={k: v for k, v in self.headers.items() if k.lower() == "authorization"},
        )
        try:
            with _DIRECT.open(request, timeout=FORWARD_TIMEOUT_S) as answer:
                self._answer(answer.status, answer.read(), answer.headers.get_content_type())
        except urllib.error.HTTPError as exc:
            self._answer(exc.code, exc.read(), exc.headers.get_content_type())
        except (urllib.error.URLError, OSError) as exc:
            self._answer(503, _error(503, "ServiceUnavailable", f"TorchServe: {exc}"))

    def _refuse(self) -> None:
        message = "this worker's management API is read-only: GET /models[/{name}] only"
        self.close_connection = True  # its body, if any, is never read
        self._answer(403, _error(403, "Forbidden", message))

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse

    def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug(format, *args)


def _error(code: int, kind: str, message: str) -> bytes:
    """TorchServe's own error shape."""
    return json.dumps({"code": code, "type": kind, "message": message}).encode()

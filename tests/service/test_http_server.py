"""The gateway's HTTP server over real sockets (uvicorn with ``service.http_server``): request
heads past their size, field count or time are refused (431, 408) and the connection closed,
while ordinary requests, large bodies included, are served; a shutdown ends within its grace."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import pytest

import service.uploads
from model_store.demo.synthetic import encode, make_images
from service.http_server import MAX_PIPELINED

from ..servers import GatewayThread
from .fakes import FakeBackend
from .test_api import MODELS, make_settings

LIMITS = {"max_header_bytes": 8192, "max_headers": 32, "header_timeout_s": 1.0}


@pytest.fixture(scope="module")
def gateway():
    with GatewayThread(make_settings(**LIMITS), FakeBackend(MODELS)) as running:
        yield running


def exchange(
    gateway, head: bytes, chunk: int = 65536, stall: bool = False
) -> tuple[int, dict, int]:
    """Send ``head`` (in chunks, stopping when the server closes), optionally stall, then read
    the answer: its status, its JSON body, and how many bytes of the head went out."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as conn:
        sent = 0
        try:
            while sent < len(head):
                sent += conn.send(head[sent : sent + chunk])
        except OSError:  # the server answered and closed while we were still sending
            pass
        if stall:
            time.sleep(0.1)
        answer = b""
        try:
            while data := conn.recv(65536):
                answer += data
        except ConnectionResetError:
            pass
    status_line, _, rest = answer.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body), sent


def request_head(headers: list[tuple[str, str]]) -> bytes:
    lines = ["GET /v1/models HTTP/1.1", "Host: gw", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_head_past_its_size_is_431_and_the_connection_closed(gateway):
    status, body, _ = exchange(gateway, request_head([("X-Big", "a" * 16 * 2**20)]))
    assert status == 431 and body["error"]["code"] == "headers_too_large"


def test_a_long_url_counts_toward_the_head(gateway):
    status, _, _ = exchange(gateway, f"GET /?q={'a' * 20000} HTTP/1.1\r\nHost: gw\r\n\r\n".encode())
    assert status == 431


def test_more_fields_than_allowed_is_431(gateway):
    status, body, _ = exchange(gateway, request_head([(f"X-{i}", "b") for i in range(20_000)]))
    assert status == 431 and "32 fields" in body["error"]["message"]
    status, _, _ = exchange(gateway, request_head([(f"X-{i}", "b") for i in range(20)]))
    assert status == 200


def test_an_unfinished_head_is_refused_before_it_is_all_sent(gateway):
    """A client sending a 30 MiB header is cut off after the limit plus about one socket read,
    not buffered: the server answers while most of it was never accepted."""
    head = b"GET /v1/models HTTP/1.1\r\nHost: gw\r\nX-Huge: " + b"a" * 30 * 2**20
    status, _, sent = exchange(gateway, head, stall=True)
    assert status == 431
    assert sent < 16 * 2**20  # socket buffers take some; the server read far less


@pytest.mark.parametrize(
    "head", [b"POST /v1/models/se_resnet50/classify HTTP/1.1\r\nHost: gw\r\n", b""]
)
def test_a_head_that_does_not_arrive_in_time_is_408(gateway, head):
    """A slow head (slowloris), or a connection that says nothing at all."""
    status, body, _ = exchange(gateway, head, stall=True)
    assert status == 408 and body["error"]["code"] == "header_timeout"


def test_ordinary_requests_and_large_bodies_are_served(gateway):
    images, _ = make_images(1, seed=3, size=(1600, 1200))
    photo = encode(images[0], "PNG")
    assert len(photo) > 1_000_000  # a body far past the head's limit is not a head
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(3):  # keep-alive: each request's head is counted afresh
            response = client.post(
                "/v1/models/se_resnet50/classify",
                content=photo,
                headers={"Content-Type": "image/png"} | {f"X-{i}": "v" * 100 for i in range(20)},
            )
            assert response.status_code == 200, response.text


SHUTDOWN_SLACK_S = 4.0


def test_shutdown_is_bounded_by_the_grace_even_with_a_batch_still_running():
    """A backend that takes a minute: SIGTERM's graceful shutdown (``shutdown_grace_s``) gives
    up on the request, and the batch still running is cancelled rather than waited for."""
    backend = FakeBackend(MODELS, delay=60)
    gateway = GatewayThread(make_settings(shutdown_grace_s=1.0), backend)
    image = encode(make_images(1, seed=1)[0][0], "JPEG")

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server gives up on it
            httpx.post(
                f"{gateway.url}/v1/models/se_resnet50/classify",
                content=image,
                headers={"Content-Type": "image/jpeg"},
                timeout=120,
            )

    with gateway:
        threading.Thread(target=send, daemon=True).start()
        wait_until(lambda: backend.batches, "the batch to reach the backend")
        stopping = time.monotonic()
        gateway.server.should_exit = True
        gateway.thread.join(30)
        took = time.monotonic() - stopping
        assert not gateway.thread.is_alive()
    print(f"stopped {took:.1f} s after the signal (grace 1 s)")
    # the grace and uvicorn's shutdown steps (it polls every 0.1 s), with room for a loaded CI
    # machine; a grace ignored would wait for the 60 s batch, one ten times longer past this
    assert took < 1.0 + SHUTDOWN_SLACK_S


def wait_until(condition, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_image_checks_run_off_the_event_loop(monkeypatch):
    """While an upload's structure walk runs (held here until the probe has answered), the
    gateway still answers its liveness probe: the walk is not on the event loop."""
    walking, probed = threading.Event(), threading.Event()
    checked = service.uploads.validate

    def slow_check(data, limits):
        walking.set()
        assert probed.wait(30), "the probe never answered while the check ran"
        return checked(data, limits)

    monkeypatch.setattr(service.uploads, "validate", slow_check)
    image = encode(make_images(1, seed=2)[0][0], "JPEG")
    with GatewayThread(make_settings(), FakeBackend(MODELS)) as gateway:
        answers: list[int] = []

        def upload() -> None:
            response = httpx.post(
                f"{gateway.url}/v1/models/se_resnet50/classify",
                content=image,
                headers={"Content-Type": "image/jpeg"},
                timeout=60,
            )
            answers.append(response.status_code)

        uploading = threading.Thread(target=upload)
        uploading.start()
        assert walking.wait(30)
        assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200
        probed.set()
        uploading.join(60)
    assert answers == [200]


def test_the_rest_of_a_body_refused_unread_is_no_head_of_the_next_request():
    """What the soak found: a request answered before its body was read (401 here; 503 when
    no upload slot is free) left the rest of its body on the connection, counted as the next
    request's head, and the next request on that keep-alive connection was answered 431."""
    body = encode(make_images(1, seed=5, size=(1024, 768))[0][0], "PNG")
    assert len(body) > 4 * LIMITS["max_header_bytes"]
    settings = make_settings(api_key="s3cret", **LIMITS)
    with (
        GatewayThread(settings, FakeBackend(MODELS)) as gateway,
        httpx.Client(base_url=gateway.url, timeout=30) as client,
    ):
        for key, status in (("wrong", 401), ("s3cret", 200), ("wrong", 401), ("s3cret", 200)):
            response = client.post(
                "/v1/models/se_resnet50/classify",
                content=body,
                headers={"Content-Type": "image/png", "X-API-Key": key},
            )
            assert response.status_code == status, response.text


def closed_within(conn: socket.socket, seconds: float) -> tuple[bytes, bool]:
    """What the server sends within ``seconds``, and whether it closed the connection."""
    conn.settimeout(seconds)
    received = b""
    try:
        while data := conn.recv(65536):
            received += data
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        pass
    return received, True


def test_the_rest_of_a_body_answered_unread_must_arrive_within_the_head_time(gateway):
    """A GET /healthz declaring a 10 MB body, then a trickle of it: answered, then closed once
    the head's time is up (the connection had no timer at all: keep-alive's is cancelled by
    every byte that arrives). A body that does arrive in time keeps the connection."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 10000000\r\n\r\nx")
        answer, closed = closed_within(conn, 0.3)
        assert answer.startswith(b"HTTP/1.1 200") and not closed
        started = time.monotonic()
        with contextlib.suppress(OSError):
            for _ in range(40):  # a byte every 0.1 s: never the whole body
                conn.sendall(b"y")
                time.sleep(0.1)
        _, closed = closed_within(conn, 5)
    assert closed and time.monotonic() - started < LIMITS["header_timeout_s"] + 5
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nContent-Length: 5\r\n\r\nx")
        time.sleep(0.2)
        conn.sendall(b"yzab" + b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        answers, closed = closed_within(conn, 3)
    assert answers.count(b"HTTP/1.1 200") == 2 and not closed


def test_requests_pipelined_past_the_cap_close_the_connection(gateway):
    """One socket read of 100 pipelined requests was queued whole; past ``MAX_PIPELINED``
    behind the one answered, the connection is closed (those before it are answered in
    order)."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=15) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n" * 100)
        answers, closed = closed_within(conn, 5)
    assert closed and 1 <= answers.count(b"HTTP/1.1 200") <= MAX_PIPELINED + 1


def test_connections_past_the_limit_are_503():
    """uvicorn's ``limit_concurrency`` from ``max_connections``: there was no limit."""
    with GatewayThread(make_settings(max_connections=16), FakeBackend(MODELS)) as gateway:
        held = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(16)]
        try:
            assert httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 503
        finally:
            for conn in held:
                conn.close()
        wait_until(
            lambda: httpx.get(f"{gateway.url}/healthz", timeout=10).status_code == 200,
            "the gateway answers again once the connections are gone",
        )

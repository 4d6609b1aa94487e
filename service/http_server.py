"""The gateway's HTTP server: uvicorn (httptools) with limits on what a request's head may cost.

uvicorn bounds neither the size nor the number of headers, nor the time a head may take to
arrive: a 16 MiB header and 200,000 headers were answered 200, and connections holding unfinished
30 MiB headers grew the process by hundreds of MiB. Here a head larger than
``max_header_bytes`` or with more than ``max_headers`` fields is answered 431, and one not
complete within ``header_timeout_s`` of its first byte (or of the connection, for a client that
sends nothing) is answered 408; either closes the connection. A connection's unparsed head stays
under ``max_header_bytes`` plus one read from the socket.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from functools import partial
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import GatewaySettings


@dataclass(frozen=True)
class HeadLimits:
    max_bytes: int
    max_fields: int
    timeout_s: float


MAX_PIPELINED = 8
"""Requests a client may send ahead on one connection before the first is answered (browsers
and HTTP clients send none: pipelining is off everywhere)."""


class HeadRefused(Exception):
    """Raised from a parser callback to stop parsing a head past its limits."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing heads past ``HeadLimits``."""

    def __init__(self, *args: Any, limits: HeadLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self._in_head = True
        self._head_bytes = 0  # read from the socket while in the head
        self._head_size = 0  # of the URL and fields parsed so far
        self._fields = 0
        self._refusal: tuple[int, str, str] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._pipeline_full = False
        self._drain_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        self._stop_drain_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if self._head_bytes > self.limits.max_bytes:  # an unfinished head past the limit
                self._send_error(*_too_large(self.limits))
                return
            self._head_bytes += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        """A request's head begins: what came before it (the rest of a body the app answered
        without reading, say) is not counted against it. Past ``MAX_PIPELINED`` requests
        waiting behind the one being answered, nothing more is read and the connection closes
        after the last one queued is answered: uvicorn queued every request one socket read
        held."""
        if len(self.pipeline) >= MAX_PIPELINED:
            self._pipeline_full = True
            self.flow.pause_reading()
            newest, _ = self.pipeline[0]  # queued with appendleft
            newest.keep_alive = False
            raise HeadRefused
        super().on_message_begin()
        self._in_head, self._head_bytes, self._head_size, self._fields = True, 0, 0, 0
        self._start_head_timer()

    def on_url(self, url: bytes) -> None:
        self._count(len(url), fields=0)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4, fields=1)  # ": " and CRLF
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._stop_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        """An answer sent before its request's body had all arrived (a 401, a 503, a GET
        /healthz with a huge Content-Length): the rest must arrive within the head's time, or
        the connection is closed. uvicorn reads on past such a body with no timer at all
        (keep-alive's is cancelled by every byte that arrives). Closing at once instead would
        reset connections still sending, and the reset may destroy the answer before the
        client reads it (a flood of honest uploads refused 503 lost theirs)."""
        super().on_response_complete()
        cycle = self.cycle
        if cycle is not None and cycle.response_complete and cycle.more_body:
            self._stop_drain_timer()
            self._drain_timer = self.loop.call_later(self.limits.timeout_s, self._drain_timed_out)

    def on_message_complete(self) -> None:
        self._stop_drain_timer()
        super().on_message_complete()

    def _stop_drain_timer(self) -> None:
        self._drain_timer = _cancelled(self._drain_timer)

    def _drain_timed_out(self) -> None:
        self._drain_timer = None
        if self.cycle is not None and self.cycle.more_body:
            self.transport.close()

    def send_400_response(self, msg: str) -> None:
        """Parser errors: ours (a head past its limits) are 431, httptools' own stay 400; a
        connection that pipelined too far gets none (its queued answers go out first, in
        order, then it closes)."""
        if self._pipeline_full:
            return
        if self._refusal is None:
            super().send_400_response(msg)
        else:
            self._send_error(*self._refusal)

    def _count(self, size: int, fields: int) -> None:
        self._head_size += size
        self._fields += fields
        if self._head_size > self.limits.max_bytes or self._fields > self.limits.max_fields:
            self._refusal = _too_large(self.limits)
            raise HeadRefused

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.timeout_s, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        self._head_timer = _cancelled(self._head_timer)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            self._send_error(
                408,
                "header_timeout",
                f"the request's headers did not arrive within {self.limits.timeout_s:g} s",
            )

    def _send_error(self, status: int, code: str, message: str) -> None:
        """An answer written before any request reached the app (nothing of it is known yet,
        so /v1's error format), then the connection is closed."""
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
        head = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        head += [
            name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers
        ]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
        ]
        self._stop_head_timer()
        self.transport.write(b"".join(head) + body)
        self.transport.close()


def _cancelled(timer: asyncio.TimerHandle | None) -> None:
    """Cancels ``timer`` if there is one; what is left of it: nothing."""
    if timer is not None:
        timer.cancel()


def _too_large(limits: HeadLimits) -> tuple[int, str, str]:
    return (
        431,
        "headers_too_large",
        f"the request's headers exceed {limits.max_bytes:,} bytes or {limits.max_fields} fields",
    )


def server_config(
    app: Any, settings: GatewaySettings, host: str, port: int, log_level: str = "info"
) -> uvicorn.Config:
    """uvicorn's configuration for the gateway app (``python -m service``, the test suite)."""
    limits = HeadLimits(settings.max_header_bytes, settings.max_headers, settings.header_timeout_s)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=partial(BoundedHttpToolsProtocol, limits=limits),  # type: ignore[arg-type]
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )

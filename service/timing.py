"""Server-Timing, written in one place. This middleware stamps each request's arrival and
writes the header on every answer: its total, and for an inference where the time went: the
gateway's own parts (``read`` the body, ``validate`` it, ``queue`` in the batcher), the
``backend`` round trip of its batch, and of that the worker's parts (``wait`` for the CPUs,
``decode``, ``model``, ``worker`` in all) as the worker reported them."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .schemas import Timing

_ARRIVED, _TIMING, _PARTS = "arrived", "timing", "parts"


def arrived(request: Request) -> float:
    """When the request arrived (``time.perf_counter``): its deadline counts from here."""
    return getattr(request.state, _ARRIVED, None) or time.perf_counter()


@contextmanager
def part(request: Request, name: str) -> Iterator[None]:
    """Time spent inside, added to the request's ``name`` part (``read``, ``validate``)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        parts = request.scope.setdefault("state", {}).setdefault(_PARTS, {})
        parts[name] = parts.get(name, 0.0) + time.perf_counter() - started


def parts_ms(request: Request) -> dict[str, float]:
    """The parts timed so far, in milliseconds."""
    parts = request.scope.get("state", {}).get(_PARTS, {})
    return {name: seconds * 1000 for name, seconds in parts.items()}


def record(request: Request, timing: Timing) -> None:
    """Hand an inference's timing to the header (the request's state is the scope's)."""
    setattr(request.state, _TIMING, timing)


def header(timing: Timing | None, total_ms: float) -> str:
    if timing is None:
        return f"total;dur={total_ms:.1f}"
    parts = {
        "read": timing.read_ms,
        "validate": timing.validate_ms,
        "queue": timing.queue_ms,
        "backend": timing.backend_ms,
    }
    if (worker := timing.worker) is not None:
        parts |= {
            "wait": worker.wait_ms,
            "decode": worker.decode_ms,
            "model": worker.model_ms,
            "worker": worker.total_ms,
        }
    parts["total"] = timing.total_ms
    return ", ".join(f"{name};dur={ms:.1f}" for name, ms in parts.items())


class ServerTiming:
    """ASGI middleware: every HTTP answer carries ``Server-Timing``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state[_ARRIVED] = time.perf_counter()

        async def send_with_timing(message: Message) -> None:
            if message["type"] == "http.response.start":
                total_ms = (time.perf_counter() - state[_ARRIVED]) * 1000
                MutableHeaders(scope=message)["Server-Timing"] = header(
                    state.get(_TIMING), total_ms
                )
            await send(message)

        await self.app(scope, receive, send_with_timing)

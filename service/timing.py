"""Server-Timing, written in one place. This middleware stamps each request's arrival and
writes the header on every answer: its total, and for an inference the queue and backend parts
that ``inference.infer`` recorded."""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .schemas import Timing

_ARRIVED, _TIMING = "arrived", "timing"


def arrived(request: Request) -> float:
    """When the request arrived (``time.perf_counter``): its deadline counts from here."""
    return getattr(request.state, _ARRIVED, None) or time.perf_counter()


def record(request: Request, timing: Timing) -> None:
    """Hand an inference's timing to the header (the request's state is the scope's)."""
    setattr(request.state, _TIMING, timing)


def header(timing: Timing | None, total_ms: float) -> str:
    if timing is None:
        return f"total;dur={total_ms:.1f}"
    return (
        f"queue;dur={timing.queue_ms:.1f}, backend;dur={timing.backend_ms:.1f}, "
        f"total;dur={timing.total_ms:.1f}"
    )


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

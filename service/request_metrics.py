"""The HTTP side of the request series: an ASGI middleware that counts each request to a model
route with the status its client really got. Apart from ``metrics`` so that the batch path's
metrics need nothing of Starlette."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import UNKNOWN_MODEL, GatewayMetrics


class RequestMetrics:
    """ASGI middleware: each request to a model route counted once, with the status its client
    really got (401s, 422s and 404s included, decided after the answer was built), its latency,
    and how many are in flight. ``routes``: path templates with a ``{model}`` parameter, each
    with the protocol it speaks."""

    def __init__(self, app: ASGIApp, routes: Mapping[str, str]) -> None:
        self.app = app
        self.patterns = [(compile_path(route)[0], protocol) for route, protocol in routes.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match, protocol = next(
            (
                (m, protocol)
                for p, protocol in self.patterns
                if scope["type"] == "http" and (m := p.match(scope["path"]))
            ),
            (None, ""),
        )
        gateway = getattr(scope["app"].state, "gateway", None) if match else None
        if match is None or gateway is None:
            await self.app(scope, receive, send)
            return
        model = match["model"] if match["model"] in gateway.models else UNKNOWN_MODEL
        metrics: GatewayMetrics = gateway.metrics
        with metrics.request(model, protocol) as outcome:

            async def record_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    outcome.status = message["status"]
                await send(message)

            await self.app(scope, receive, record_status)

"""Every failure leaves as ``{"error": {"code", "message"}}`` with a status code of the API
contract (``docs/ARCHITECTURE.md``); under a protocol's prefix in the format its router declares
(``/v2``: the Open Inference Protocol's ``{"error": "message"}``), with the same status."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

CLIENT_CLOSED = 499
"""nginx's "client closed request": counted in the metrics; the client is gone, nobody reads it."""


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def unavailable(message: str, retry_after_s: float, code: str = "unavailable") -> ApiError:
    """A 503 with Retry-After. Its code says whose limit it is: ``unavailable`` (the backend
    is down or failing), ``queue_full``, ``too_many_uploads`` or ``deadline_unmeetable`` (the
    gateway's own limits, shedding load)."""
    return ApiError(503, code, message, {"Retry-After": str(max(1, math.ceil(retry_after_s)))})


ErrorBody = Callable[[str, str], dict[str, Any]]
"""``(code, message)`` -> an error's JSON body in one protocol's format."""


def gateway_error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}


def error_response(
    request: Request,
    status: int,
    code: str,
    message: str,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error in the format of the protocol the request spoke: the one registered for its
    path's prefix (``install_error_handlers``), else the gateway's own."""
    path = request.url.path
    formats: Mapping[str, ErrorBody] = request.app.state.error_formats
    body = next(
        (fmt for prefix, fmt in formats.items() if path == prefix or path.startswith(f"{prefix}/")),
        gateway_error_body,
    )
    return JSONResponse(body(code, message), status, headers=headers)


def install_error_handlers(app: FastAPI, formats: Mapping[str, ErrorBody]) -> None:
    """Every error as JSON; under each prefix of ``formats`` (a protocol's routes, which declare
    their own format) in that format."""
    app.state.error_formats = dict(formats)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return error_response(request, 422, "invalid_parameters", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(
            request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        """The last resort: still JSON, still no internals in the answer (they go to the log)."""
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(
            request, 500, "internal_error", "internal error in the gateway; see its log"
        )

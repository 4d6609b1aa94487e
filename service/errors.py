"""Every failure leaves as ``{"error": {"code", "message"}}`` with a SPEC status code."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def unavailable(message: str, retry_after_s: float) -> ApiError:
    return ApiError(503, "unavailable", message, {"Retry-After": str(max(1, round(retry_after_s)))})


# What the worker reports per image -> HTTP status at the gateway.
IMAGE_ERROR_STATUS = {
    "undecodable_image": 400,
    "image_too_large": 413,
    "unsupported_image_type": 415,
    "invalid_top_k": 422,
}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


def count_rejected_classify(request: Request, status: int) -> None:
    """Requests FastAPI refuses before the route runs (bad query parameters) still count."""
    model = request.path_params.get("model")
    gateway = getattr(request.app.state, "gateway", None)
    if model is not None and gateway is not None:
        gateway.metrics.requests.labels(
            model if model in gateway.models else "_unknown", str(status)
        ).inc()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        count_rejected_classify(request, 422)
        details = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body("invalid_parameters", details), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            error_body(code, str(exc.detail)),
            exc.status_code,
            headers=getattr(exc, "headers", None),
        )

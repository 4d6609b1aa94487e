"""The one small interface the gateway needs from whatever runs the model, and its errors."""

from __future__ import annotations

from typing import Any, Protocol

from pydantic import TypeAdapter, ValidationError

from ..schemas import ErrorResponse, ImageResult


class BackendError(Exception):
    """A whole batch failed. ``reached``: the backend received it (so its duration and size are
    real observations for the metrics)."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, reached: bool) -> None:
        super().__init__(message)
        self.reached = reached


class BackendUnavailable(BackendError):
    """The backend cannot take work now (down, restarting, overloaded); retry after a while."""

    def __init__(self, message: str, retry_after_s: float = 1.0, *, reached: bool = False) -> None:
        super().__init__(message, reached=reached)
        self.retry_after_s = retry_after_s


class BackendTimeout(BackendError):
    """The backend took the batch and did not answer within the configured timeout."""

    status = 504
    code = "backend_timeout"

    def __init__(self, message: str) -> None:
        super().__init__(message, reached=True)


class BadBackendResponse(BackendError):
    """The backend answered, but not with one well-formed result per image."""

    status = 502
    code = "bad_backend_response"

    def __init__(self, message: str) -> None:
        super().__init__(message, reached=True)


_RESULTS = TypeAdapter(list[ImageResult | ErrorResponse])


def check_results(results: object, count: int) -> list[dict[str, Any]]:
    """One well-formed entry per image (finite scores in [0, 1]), or ``BadBackendResponse``."""
    if not isinstance(results, list) or len(results) != count:
        got = len(results) if isinstance(results, list) else type(results).__name__
        raise BadBackendResponse(f"the worker returned {got} results for {count} images")
    try:
        parsed = _RESULTS.validate_python(results)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(map(str, first["loc"][:1] + first["loc"][2:]))
        raise BadBackendResponse(f"malformed worker result at {where}: {first['msg']}") from None
    return [entry.model_dump() for entry in parsed]


class Backend(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def classify(self, model: str, images: list[bytes], top_k: int) -> list[dict[str, Any]]:
        """One entry per image, in order: ``{"predictions": [...]}`` or ``{"error": {...}}``.
        Raises a ``BackendError`` for the whole batch."""
        ...

    async def readiness(self) -> dict[str, str]:
        """Per served model: ``"ready"`` or why not."""
        ...

"""What every inference route does once it has read its inputs, whatever protocol it speaks:
run them through the model's batcher within the request's deadline, turn each failure into its
status (``docs/ARCHITECTURE.md``), count the images, time the answer."""

from __future__ import annotations

import time
from typing import Any

from fastapi import Request
from pydantic import BaseModel

from contract.errors import INPUT_ERROR_STATUS

from . import timing
from .backends.base import (
    BackendError,
    BackendUnavailable,
    BatchResult,
    InputFailure,
    WorkerResult,
)
from .batcher import BatchInfo, DeadlineUnmeetable, QueueFull
from .deps import Gateway
from .errors import ApiError, unavailable
from .inputs import Upload
from .schemas import Timing

SHARED_ERRORS = {
    401: "missing or wrong API key (when one is configured)",
    408: "the request body did not arrive within upload_timeout_s",
    413: "too many bytes, pixels or images, or an aspect ratio past the limit",
    502: "the worker answered with something other than one result per image",
    503: "queue full, too many uploads at once, backend down, or the deadline cannot be met "
    "given the work queued ahead (deadline_unmeetable); see Retry-After",
    504: "no answer within the request's deadline or the backend's timeout",
}
"""What every inference route may answer, whatever its protocol."""


def documented_errors(
    body: type[BaseModel], own: dict[int, str]
) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of an inference route: its own failures and the shared ones,
    each with the error body its protocol sends."""
    return {
        status: {"model": body, "description": description}
        for status, description in sorted((SHARED_ERRORS | own).items())
    }


async def infer(
    request: Request,
    gateway: Gateway,
    model: str,
    uploads: list[Upload],
    top_k: int,
    *,
    timeout_ms: float | None,
    protocol: str,
    probabilities: bool = False,
) -> tuple[list[WorkerResult], Timing]:
    """Each input's answer, in order, or the ``ApiError`` of the first that failed. The
    deadline counts from the request's arrival (reading the upload spends the same budget);
    the timing goes to the Server-Timing header too."""
    arrived = timing.arrived(request)
    timeout_s = gateway.settings.deadline_s(model, timeout_ms)
    answers = await _dispatch(
        gateway, model, uploads, top_k, arrived + timeout_s, timeout_s, probabilities
    )
    results: list[WorkerResult] = []
    for index, (result, _info) in enumerate(answers):
        if isinstance(result, InputFailure):
            error = result.error
            raise ApiError(
                INPUT_ERROR_STATUS[error.code], error.code, f"image {index}: {error.message}"
            )
        results.append(result)
    gateway.metrics.images.labels(model, protocol).inc(len(uploads))
    parts = timing.parts_ms(request)
    slowest = max(answers, key=lambda answer: answer[1].run_s)[0]
    spent = Timing(
        read_ms=parts.get("read", 0.0),
        validate_ms=parts.get("validate", 0.0),
        queue_ms=max(info.queue_wait_s for _, info in answers) * 1000,
        backend_ms=max(info.run_s for _, info in answers) * 1000,
        worker=slowest.timing if isinstance(slowest, WorkerResult) else None,
        total_ms=(time.perf_counter() - arrived) * 1000,
        batch_sizes=[info.size for _, info in answers],
    )
    timing.record(request, spent)
    return results, spent


async def _dispatch(
    gateway: Gateway,
    model: str,
    uploads: list[Upload],
    top_k: int,
    deadline: float,
    timeout_s: float,
    probabilities: bool,
) -> list[tuple[BatchResult, BatchInfo]]:
    """Backpressure, deadlines and backend failures, as the API contract's status codes."""
    try:
        return await gateway.dispatcher.classify(model, uploads, top_k, deadline, probabilities)
    except QueueFull as exc:
        raise unavailable(f"queue full: {exc}", 1.0, "queue_full") from None
    except DeadlineUnmeetable as exc:
        raise unavailable(str(exc), exc.retry_after_s, "deadline_unmeetable") from None
    except BackendUnavailable as exc:
        raise unavailable(f"backend unavailable: {exc}", exc.retry_after_s) from None
    except BackendError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    except TimeoutError:
        raise ApiError(504, "backend_timeout", f"no answer within {timeout_s:g} s") from None

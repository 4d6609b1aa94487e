"""``POST /v1/models/{model}/classify``: validate, enqueue, await, shape the answer.

Counting requests by status is the ``RequestMetrics`` middleware's job, so refusals made before
this function runs (401, 422) and errors raised after it (500) are counted with the rest."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response

from model_store.contract import MAX_TOP_K

from ..backends.base import BackendError, BackendUnavailable
from ..batcher import BatchInfo, DeadlineUnmeetable, QueueFull
from ..deps import ApiKeyDep, Gateway, GatewayDep, UploadSlotDep
from ..errors import IMAGE_ERROR_STATUS, ApiError, unavailable
from ..schemas import ClassifyResponse, ErrorResponse, ImageResult, Timing
from ..uploads import IMAGE_CONTENT_TYPES, Upload, read_images

CLASSIFY_ROUTE = "/v1/models/{model}/classify"

router = APIRouter(tags=["classify"])

_binary = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                }
            },
            **{content_type: _binary for content_type in sorted(IMAGE_CONTENT_TYPES)},
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "undecodable or truncated image, malformed multipart",
        401: "missing or wrong API key (when one is configured)",
        404: "unknown model",
        408: "the request body did not arrive within upload_timeout_s",
        413: "too many bytes, pixels or images, or an aspect ratio past the limit",
        415: "not a still JPEG, PNG or WebP",
        422: "bad parameters",
        502: "the worker answered with something other than one result per image",
        503: "queue full, too many uploads at once, backend down, or the deadline cannot be "
        "met given the work queued ahead (deadline_unmeetable); see Retry-After",
        504: "no answer within the request's deadline or the backend's timeout",
    }.items()
}


@router.post(
    CLASSIFY_ROUTE,
    response_model=ClassifyResponse,
    responses=ERRORS,
    openapi_extra=REQUEST_BODY,
    summary="Classify one or several images",
)
async def classify(
    request: Request,
    response: Response,
    gateway: GatewayDep,
    _: ApiKeyDep,
    __: UploadSlotDep,
    model: Annotated[str, Path(description="a served model, see GET /v1/models")],
    top_k: Annotated[int, Query(ge=1, le=MAX_TOP_K, description="predictions per image")] = 5,
    x_request_timeout_ms: Annotated[
        float | None,
        Header(gt=0, description="this request's deadline; default: the model's, see settings"),
    ] = None,
) -> ClassifyResponse:
    started = time.perf_counter()
    if model not in gateway.models:
        raise ApiError(
            404,
            "model_not_found",
            f"model {model!r} is not served; served: {', '.join(gateway.models)}",
        )
    uploads = await read_images(request, gateway.settings)
    timeout_s = gateway.settings.deadline_s(model, x_request_timeout_ms)
    answers = await _dispatch(gateway, model, uploads, top_k, started, timeout_s)
    for index, (result, _info) in enumerate(answers):
        if "error" in result:
            code = result["error"]["code"]
            raise ApiError(
                IMAGE_ERROR_STATUS.get(code, 400),
                code,
                f"image {index}: {result['error']['message']}",
            )
    timing = Timing(
        queue_ms=max(info.queue_wait_s for _, info in answers) * 1000,
        backend_ms=max(info.run_s for _, info in answers) * 1000,
        total_ms=(time.perf_counter() - started) * 1000,
        batch_sizes=[info.size for _, info in answers],
    )
    body = ClassifyResponse(
        model=model, results=[ImageResult(**result) for result, _ in answers], timing=timing
    )
    response.headers["Server-Timing"] = (
        f"queue;dur={timing.queue_ms:.1f}, backend;dur={timing.backend_ms:.1f}, "
        f"total;dur={timing.total_ms:.1f}"
    )
    gateway.metrics.images.labels(model).inc(len(uploads))
    return body


async def _dispatch(
    gateway: Gateway,
    model: str,
    uploads: list[Upload],
    top_k: int,
    arrived: float,
    timeout_s: float,
) -> list[tuple[dict[str, Any], BatchInfo]]:
    """Backpressure, deadlines (counted from the request's arrival: reading the upload spends
    the same budget) and backend failures, as SPEC status codes."""
    try:
        return await gateway.dispatcher.classify(model, uploads, top_k, arrived + timeout_s)
    except QueueFull as exc:
        raise unavailable(f"queue full: {exc}", 1.0) from None
    except DeadlineUnmeetable as exc:
        raise unavailable(str(exc), exc.retry_after_s, "deadline_unmeetable") from None
    except BackendUnavailable as exc:
        raise unavailable(f"backend unavailable: {exc}", exc.retry_after_s) from None
    except BackendError as exc:
        raise ApiError(exc.status, exc.code, str(exc)) from None
    except TimeoutError:
        raise ApiError(504, "backend_timeout", f"no answer within {timeout_s:g} s") from None

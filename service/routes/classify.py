"""``POST /v1/models/{model}/classify``: validate, enqueue, await. Nothing else."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response

from ..backends.base import BackendTimeout, BackendUnavailable
from ..batcher import QueueFull
from ..deps import ApiKeyDep, Gateway, GatewayDep
from ..errors import IMAGE_ERROR_STATUS, ApiError, unavailable
from ..schemas import ClassifyResponse, ErrorResponse, ImageResult, Timing
from ..uploads import IMAGE_CONTENT_TYPES, read_images

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
        413: "too many bytes, pixels or images",
        415: "not JPEG, PNG or WebP",
        422: "bad parameters",
        503: "queue full or backend down (see Retry-After)",
        504: "backend timed out",
    }.items()
}


@router.post(
    "/v1/models/{model}/classify",
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
    model: Annotated[str, Path(description="a served model, see GET /v1/models")],
    top_k: Annotated[int, Query(ge=1, le=20, description="predictions per image")] = 5,
) -> ClassifyResponse:
    started = time.perf_counter()
    metrics = gateway.metrics
    if model not in gateway.models:
        metrics.requests.labels("_unknown", "404").inc()
        raise ApiError(
            404,
            "model_not_found",
            f"model {model!r} is not served; served: {', '.join(gateway.models)}",
        )
    status = 500
    metrics.inflight.labels(model).inc()
    try:
        images = await read_images(request, gateway.settings)
        answers = await _dispatch(gateway, model, images, top_k)
        for index, (result, _info) in enumerate(answers):
            if "error" in result:
                code = result["error"]["code"]
                raise ApiError(
                    IMAGE_ERROR_STATUS.get(code, 400),
                    code,
                    f"image {index}: {result['error']['message']}",
                )
        total_ms = (time.perf_counter() - started) * 1000
        timing = Timing(
            queue_ms=max(info.queue_wait_s for _, info in answers) * 1000,
            backend_ms=max(info.run_s for _, info in answers) * 1000,
            total_ms=total_ms,
            batch_sizes=[info.size for _, info in answers],
        )
        response.headers["Server-Timing"] = (
            f"queue;dur={timing.queue_ms:.1f}, backend;dur={timing.backend_ms:.1f}, "
            f"total;dur={total_ms:.1f}"
        )
        metrics.images.labels(model).inc(len(images))
        status = 200
        return ClassifyResponse(
            model=model, results=[ImageResult(**result) for result, _ in answers], timing=timing
        )
    except ApiError as exc:
        status = exc.status
        raise
    finally:
        metrics.inflight.labels(model).dec()
        metrics.requests.labels(model, str(status)).inc()
        metrics.request_duration.labels(model).observe(time.perf_counter() - started)


async def _dispatch(gateway: Gateway, model: str, images: list[bytes], top_k: int) -> list[Any]:
    """Backpressure and backend failures, as SPEC status codes."""
    try:
        return await gateway.dispatcher.classify(model, images, top_k)
    except QueueFull as exc:
        raise unavailable(f"queue full: {exc}", 1.0) from None
    except BackendUnavailable as exc:
        raise unavailable(f"backend unavailable: {exc}", exc.retry_after_s) from None
    except (BackendTimeout, TimeoutError) as exc:
        raise ApiError(
            504, "backend_timeout", str(exc) or "the backend did not answer in time"
        ) from None

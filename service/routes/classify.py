"""``POST /v1/models/{model}/classify``: read the uploads, infer, shape the answer.

Counting requests by status is the ``RequestMetrics`` middleware's job, so refusals made before
this function runs (401, 422) and errors raised after it (500) are counted with the rest."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from contract.protocol import DEFAULT_TOP_K, MAX_TOP_K

from ..deps import ApiKeyDep, GatewayDep, RequestTimeoutMs, ServedModel, UploadSlotDep
from ..inference import documented_errors, infer
from ..metrics import PROTOCOL_V1
from ..schemas import ClassifyResponse, ErrorResponse, ImageResult
from ..uploads import IMAGE_CONTENT_TYPES, read_images

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
ERRORS = documented_errors(
    ErrorResponse,
    {
        400: "undecodable or truncated image, malformed multipart",
        404: "unknown model",
        415: "not a still JPEG, PNG or WebP",
        422: "bad parameters",
    },
)


@router.post(
    CLASSIFY_ROUTE,
    response_model=ClassifyResponse,
    responses=ERRORS,
    openapi_extra=REQUEST_BODY,
    summary="Classify one or several images",
)
async def classify(
    request: Request,
    gateway: GatewayDep,
    _: ApiKeyDep,
    slot: UploadSlotDep,
    model: ServedModel,
    top_k: Annotated[
        int, Query(ge=1, le=MAX_TOP_K, description="predictions per image")
    ] = DEFAULT_TOP_K,
    x_request_timeout_ms: RequestTimeoutMs = None,
) -> ClassifyResponse:
    uploads = await read_images(request, gateway.settings, slot.slow_down, slot.slots.decoding)
    results, timing = await infer(
        request,
        gateway,
        model,
        uploads,
        top_k,
        timeout_ms=x_request_timeout_ms,
        protocol=PROTOCOL_V1,
    )
    return ClassifyResponse(
        model=model,
        results=[ImageResult(predictions=r.predictions) for r in results],
        timing=timing,
    )

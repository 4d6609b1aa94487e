"""The Open Inference Protocol (KServe V2) routes: health, server and model metadata, model
readiness and inference, through the same batchers, limits, deadlines and metrics as ``/v1``.

The per-model routes are one router mounted twice: at ``/v2/models/{model}`` and at
``/v2/models/{model}/versions/{version}``, where the version must be the one served."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse

from contract.protocol import TENSOR_CHANNELS
from model_store.zoo.precision import DEFAULT_PRECISION

from .. import timing
from ..backends.base import WorkerFacts
from ..deps import (
    ApiKeyDep,
    Gateway,
    GatewayDep,
    RequestTimeoutMs,
    ServedModel,
    UploadSlot,
    UploadSlotDep,
)
from ..errors import ApiError
from ..inference import documented_errors, infer
from ..metrics import PROTOCOL_V2
from ..open_inference.answer import encode_response
from ..open_inference.body import decompress
from ..open_inference.protocol import (
    BYTES,
    EXTENSIONS,
    FP32,
    HEADER_LENGTH,
    IMAGES_INPUT,
    MODEL_VERSION,
    PIXELS_INPUT,
    PROBABILITIES_OUTPUT,
    SERVER_NAME,
    V2_PREFIX,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
    TensorMetadata,
    V2Error,
    inline_schema,
)
from ..open_inference.request import DecodedRequest, decode_request
from ..schemas import READY
from ..uploads import read_body
from .health import not_ready

MODEL = "/models/{model}"
VERSION = f"{MODEL}/versions/{{version}}"
INFER = "/infer"

router = APIRouter(prefix=V2_PREFIX, tags=["open inference protocol"])


def error_body(code: str, message: str) -> dict[str, Any]:
    """The protocol's error: ``{"error": message}`` (the code is in the status alone)."""
    return V2Error(error=message).model_dump()


model_router = APIRouter(tags=["open inference protocol"])

ERRORS = documented_errors(
    V2Error,
    {
        400: "malformed body or tensors, undecodable image",
        404: "unknown model or version",
        415: "not a still JPEG, PNG or WebP, or an unsupported Content-Encoding",
        422: "bad parameters (classification, timeout)",
        503: "queue full, too many uploads at once, backend down, model not ready, or the "
        "deadline cannot be met; see Retry-After",
    },
)
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": inline_schema(InferenceRequest)},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "x-description": f"the JSON object, then binary tensor data ({HEADER_LENGTH})",
            },
        },
    }
}
INFER_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "application/json": {"schema": inline_schema(InferenceResponse)},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
        "description": f"the outputs; binary ones follow the JSON object ({HEADER_LENGTH})",
    },
    **ERRORS,
}


@router.get("", response_model=ServerMetadata)
async def server_metadata(request: Request, _: ApiKeyDep) -> ServerMetadata:
    return ServerMetadata(name=SERVER_NAME, version=request.app.version, extensions=EXTENSIONS)


@router.get("/health/live", response_model=ServerLive)
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get("/health/ready", response_model=ServerReady, responses={503: {"model": ServerReady}})
async def server_ready(gateway: GatewayDep) -> ServerReady | JSONResponse:
    """As ``/readyz``: ready while at least one served model is."""
    ready = any(state == READY for state in (await gateway.backend.readiness()).values())
    return ServerReady(ready=True) if ready else not_ready(ServerReady(ready=False))


async def served_version(
    model: ServedModel,
    version: Annotated[str, Path(description=f"the one served: {MODEL_VERSION}")],
) -> None:
    if version != MODEL_VERSION:
        raise ApiError(
            404,
            "version_not_found",
            f"model {model!r} has no version {version!r}; served: {MODEL_VERSION}",
        )


async def reported_facts(gateway: Gateway, model: str) -> WorkerFacts | None:
    """What the model's worker reported (asked again if it has not yet: readiness asks)."""
    if model not in gateway.backend.worker_facts():
        await gateway.backend.readiness()
    return gateway.backend.worker_facts().get(model)


@model_router.get("", response_model=ModelMetadata, responses=ERRORS)
async def model_metadata(gateway: GatewayDep, model: ServedModel) -> ModelMetadata:
    """Inputs and outputs with their shapes, as the model's worker reports them (-1 for the
    batch dimension, and for sizes not known until the worker has reported)."""
    facts = await reported_facts(gateway, model)
    side = facts.input_size if facts and facts.input_size else -1
    classes = facts.num_classes if facts and facts.num_classes else -1
    return ModelMetadata(
        name=model,
        versions=[MODEL_VERSION],
        platform=platform(facts),
        inputs=[
            TensorMetadata(name=IMAGES_INPUT, datatype=BYTES, shape=[-1]),
            TensorMetadata(
                name=PIXELS_INPUT, datatype=FP32, shape=[-1, TENSOR_CHANNELS, side, side]
            ),
        ],
        outputs=[TensorMetadata(name=PROBABILITIES_OUTPUT, datatype=FP32, shape=[-1, classes])],
        parameters=facts.model_dump(include={"runtime", "precision"}) if facts else {},
    )


def platform(facts: WorkerFacts | None) -> str:
    """``pytorch_<runtime>``, with ``_<precision>`` unless it computes in float32."""
    if facts is None:
        return "pytorch"
    suffix = "" if facts.precision == DEFAULT_PRECISION else f"_{facts.precision}"
    return f"pytorch_{facts.runtime}{suffix}"


@model_router.get(
    "/ready", response_model=ModelReady, responses={503: {"model": ModelReady}, **ERRORS}
)
async def model_ready(gateway: GatewayDep, model: ServedModel) -> ModelReady | JSONResponse:
    """200 when this model has a ready worker, 503 when not (as ``/v1/models/{model}/ready``)."""
    ready = (await gateway.backend.readiness()).get(model) == READY
    body = ModelReady(name=model, ready=ready)
    return body if ready else not_ready(body)


@model_router.post(
    INFER,
    response_class=Response,
    responses=INFER_ANSWERS,
    openapi_extra=REQUEST_BODY,
    summary="Classify images (BYTES) or preprocessed pixels (FP32)",
)
async def model_infer(
    request: Request,
    gateway: GatewayDep,
    _: ApiKeyDep,
    slot: UploadSlotDep,
    model: ServedModel,
    x_request_timeout_ms: RequestTimeoutMs = None,
) -> Response:
    """Batched with every other request for the model, /v1's included. The ``timeout``
    parameter (microseconds) or ``X-Request-Timeout-Ms`` is the request's deadline."""
    decoded = await read_inference_request(request, gateway, model, slot)
    results, _ = await infer(
        request,
        gateway,
        model,
        decoded.uploads,
        decoded.top_k,
        timeout_ms=decoded.timeout_ms or x_request_timeout_ms,
        protocol=PROTOCOL_V2,
        probabilities=decoded.probabilities,
    )
    content, headers = encode_response(model, MODEL_VERSION, decoded, results)
    return Response(content, headers=headers)


async def read_inference_request(
    request: Request, gateway: Gateway, model: str, slot: UploadSlot
) -> DecodedRequest:
    """The request's validated inputs, decoded off the event loop (inflating, parsing and
    checking 10 MiB takes tens of milliseconds). The body is not held past this: while the
    request waits for its batch, only its inputs are. The input size is what the worker last
    reported to the readiness checks (until it has, an FP32 tensor is a 503: not ready)."""
    settings = gateway.settings
    with timing.part(request, "read"):
        body = await read_body(request, settings, slot.slow_down)
    facts = gateway.backend.worker_facts().get(model)  # cached: never a management call here

    def decode() -> DecodedRequest:
        inflated = decompress(
            body, request.headers.get("content-encoding"), settings.max_upload_bytes
        )
        return decode_request(
            inflated,
            request.headers.get(HEADER_LENGTH),
            settings.limits,
            settings.max_images_per_request,
            facts.input_size if facts else None,
        )

    with timing.part(request, "validate"):
        async with slot.slots.decoding:
            return await asyncio.to_thread(decode)


router.include_router(model_router, prefix=MODEL)
router.include_router(model_router, prefix=VERSION, dependencies=[Depends(served_version)])
INFER_ROUTES = [f"{V2_PREFIX}{MODEL}{INFER}", f"{V2_PREFIX}{VERSION}{INFER}"]
"""The inference paths, for the request metrics."""

"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from ..backends.base import ready_endpoints
from ..deps import GatewayDep, ServedModel
from ..schemas import NOT_READY, READY, ErrorResponse, Health, ModelReadiness, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (says nothing about the backend)."""
    return Health(status="ok")


def not_ready(body: BaseModel) -> JSONResponse:
    return JSONResponse(body.model_dump(), 503, headers={"Retry-After": "5"})


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(gateway: GatewayDep) -> Readiness | JSONResponse:
    """Ready while at least one served model has a ready worker: one model whose worker is down
    must not take the others off the air. ``models`` says which are ready, ``endpoints`` on how
    many TorchServes; why not, per model and endpoint, ``GET /v1/models/{model}/ready`` (behind
    the API key: this probe is open to anyone, and says nothing of the insides)."""
    models = {
        model: READY if state == READY else NOT_READY
        for model, state in (await gateway.backend.readiness()).items()
    }
    ready = READY in models.values()
    found = gateway.backend.endpoints()
    body = Readiness(
        status=READY if ready else NOT_READY,
        backend=gateway.settings.backend,
        models=models,
        endpoints={m: ready_endpoints(found.get(m, [])) for m in models},
    )
    return body if ready else not_ready(body)


@router.get(
    "/v1/models/{model}/ready",
    response_model=ModelReadiness,
    responses={404: {"model": ErrorResponse}, 503: {"model": ModelReadiness}},
)
async def model_ready(gateway: GatewayDep, model: ServedModel) -> ModelReadiness | JSONResponse:
    """200 when this model has a ready worker, 503 (with the reason) when not. Behind the API
    key, as everything that names models: the probes are ``/healthz`` and ``/readyz``."""
    state = (await gateway.backend.readiness()).get(model, "unknown")
    body = ModelReadiness(
        model=model,
        ready=state == READY,
        status=state,
        endpoints=gateway.backend.endpoints().get(model, []),
    )
    return body if body.ready else not_ready(body)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 500: {"model": ErrorResponse}},
)
async def metrics(gateway: GatewayDep) -> Response:
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deps import GatewayDep
from ..schemas import ErrorResponse, Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (says nothing about the backend)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(gateway: GatewayDep) -> Readiness | JSONResponse:
    """Ready when the backend is reachable and every served model has a ready worker."""
    models = await gateway.backend.readiness()
    ready = all(state == "ready" for state in models.values())
    body = Readiness(
        status="ready" if ready else "not_ready", backend=gateway.settings.backend, models=models
    )
    if ready:
        return body
    return JSONResponse(body.model_dump(), 503, headers={"Retry-After": "5"})


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}}, 500: {"model": ErrorResponse}},
)
async def metrics(gateway: GatewayDep) -> Response:
    return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

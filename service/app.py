"""The application factory: settings -> backend -> batchers -> routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from contract.keys import RENEWABLE_KINDS, KeyRing
from model_store.zoo.registry import get_spec

from .backends.base import Backend
from .backends.circuit import CircuitBreaker
from .backends.endpoints import Discovery
from .backends.torchserve_client import TorchServeBackend
from .backends.torchserve_keys import RENEWAL_FAILED, RENEWED
from .deps import Gateway
from .dispatcher import Dispatcher
from .errors import install_error_handlers
from .metrics import PROTOCOL_V1, PROTOCOL_V2, GatewayMetrics
from .request_metrics import RequestMetrics
from .routes import classify, health, models, v2
from .schemas import ModelInfo
from .settings import GatewaySettings
from .timing import ServerTiming

log = logging.getLogger(__name__)

MAX_ENDPOINTS = 64
"""TorchServes one gateway keeps connections to (its pool's size, not a limit on finding)."""


def build_backend(settings: GatewaySettings, metrics: GatewayMetrics) -> Backend:
    if settings.backend == "inprocess":
        # the models in this process: torch and the worker's dependencies (`.[worker]`)
        from .backends.inprocess import InProcessBackend

        return InProcessBackend(
            settings.models,
            settings.archive_dir,
            settings.backend_timeout_s,
            settings.max_batch_size,
        )
    for kind in RENEWABLE_KINDS:  # every series from the start, so rate() sees the first failure
        for outcome in (RENEWED, RENEWAL_FAILED):
            metrics.key_renewals.labels(kind, outcome)
    discovery = Discovery(
        settings.torchserve_inference_url,
        settings.torchserve_management_url,
        dns=settings.torchserve_discovery == "dns",
    )
    return TorchServeBackend(
        settings.models,
        discovery,
        KeyRing(settings.torchserve_key_file, settings.torchserve_token),
        timeout_s=settings.backend_timeout_s,
        breakers=lambda: CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s),
        readiness_timeout_s=settings.readiness_timeout_s,
        max_batch_size=settings.max_batch_size,
        # a safety net only: the batchers bound the batches in flight (per ready endpoint)
        max_connections=len(settings.models) * settings.max_concurrent_batches * MAX_ENDPOINTS + 8,
        on_key_renewal=lambda kind, outcome: metrics.key_renewals.labels(kind, outcome).inc(),
        refresh_s=settings.discovery_interval_s,
    )


def describe_models(names: list[str]) -> dict[str, ModelInfo]:
    """What the registry knows; sizes, runtime and status come from the workers when listed."""
    return {
        name: ModelInfo(
            name=name,
            architecture=get_spec(name).architecture,
            attention=get_spec(name).attention,
            status="",
        )
        for name in names
    }


def create_app(settings: GatewaySettings | None = None, backend: Backend | None = None) -> FastAPI:
    settings = settings or GatewaySettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = GatewayMetrics()
        chosen = backend or build_backend(settings, metrics)
        await chosen.start()
        metrics.watch_workers(chosen.worker_facts)
        metrics.watch_endpoints(chosen)
        dispatcher = Dispatcher(chosen, settings, metrics)
        app.state.gateway = Gateway(
            settings, chosen, dispatcher, metrics, describe_models(settings.models)
        )
        log.info("gateway serving %s with the %s backend", settings.models, settings.backend)
        try:
            yield
        finally:
            await dispatcher.stop()
            await chosen.close()

    hide_docs = settings.api_key is not None and not settings.public_docs
    app = FastAPI(
        **({"openapi_url": None, "docs_url": None, "redoc_url": None} if hide_docs else {}),
        title="Channel-attention classifier gateway",
        version="0.1.0",
        description="Batches image uploads to ResNet-50 workers with SE/ECA/CBAM/SA attention.",
        lifespan=lifespan,
    )
    install_error_handlers(app, {v2.router.prefix: v2.error_body})
    app.add_middleware(ServerTiming)
    app.add_middleware(
        RequestMetrics,
        routes={classify.CLASSIFY_ROUTE: PROTOCOL_V1} | dict.fromkeys(v2.INFER_ROUTES, PROTOCOL_V2),
    )

    for router in (classify.router, models.router, health.router, v2.router):
        app.include_router(router)
    return app

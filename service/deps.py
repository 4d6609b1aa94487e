"""Dependencies routes declare with ``Annotated``: the gateway's state and the optional API key."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request

from .backends.base import Backend
from .dispatcher import Dispatcher
from .errors import ApiError, unavailable
from .metrics import GatewayMetrics
from .schemas import ModelInfo
from .settings import GatewaySettings


@dataclass
class Gateway:
    settings: GatewaySettings
    backend: Backend
    dispatcher: Dispatcher
    metrics: GatewayMetrics
    models: dict[str, ModelInfo]
    upload_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.upload_slots = asyncio.Semaphore(self.settings.max_concurrent_uploads)


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def require_api_key(gateway: GatewayDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """Compared as bytes: a header with non-ASCII characters is a wrong key (401), not a crash."""
    expected = gateway.settings.api_key
    if expected and not (
        x_api_key
        and secrets.compare_digest(
            x_api_key.encode("utf-8", "surrogateescape"), expected.encode("utf-8")
        )
    ):
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")


ApiKeyDep = Annotated[None, Depends(require_api_key)]


async def upload_slot(gateway: GatewayDep) -> AsyncIterator[None]:
    """Bounds the requests holding upload bytes at once (reading, queued or in a batch), so
    gateway memory stays under ``max_concurrent_uploads * max_upload_bytes``."""
    if gateway.upload_slots.locked():
        raise unavailable(
            f"{gateway.settings.max_concurrent_uploads} uploads in progress; retry shortly", 1.0
        )
    async with gateway.upload_slots:
        yield


UploadSlotDep = Annotated[None, Depends(upload_slot)]

RequestTimeoutMs = Annotated[
    float | None,
    Header(gt=0, description="this request's deadline; default: the model's, see settings"),
]
"""The ``X-Request-Timeout-Ms`` header of the inference routes."""

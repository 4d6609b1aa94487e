"""Dependencies routes declare with ``Annotated``: the gateway's state and the optional API key."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Request

from .backends.base import Backend
from .dispatcher import Dispatcher
from .errors import ApiError, unavailable
from .metrics import UNKNOWN_MODEL as UNSERVED
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
    upload_slots: UploadSlots = field(init=False)

    def __post_init__(self) -> None:
        self.upload_slots = UploadSlots(self.settings.max_concurrent_uploads, list(self.models))


class UploadSlots:
    """Requests holding upload bytes (reading, queued or in a batch): at most ``total`` at once,
    and no served model more than ``per_model``, which leaves every other model a reserve of
    ``total / (2 * models)`` slots. Found by the soak: while one model's worker restarted, its
    waiting requests took every slot and the other, healthy model was answered 503."""

    def __init__(self, total: int, models: list[str]) -> None:
        self.total = total
        reserve = total // (2 * len(models)) if len(models) > 1 else 0
        self.per_model = max(1, total - reserve * (len(models) - 1))
        self.held: Counter[str] = Counter()

    def take(self, model: str) -> bool:
        """One slot for a request to ``model``, if there is one."""
        if sum(self.held.values()) >= self.total or self.held[model] >= self.per_model:
            return False
        self.held[model] += 1
        return True

    def give_back(self, model: str) -> None:
        self.held[model] -= 1


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


async def upload_slot(gateway: GatewayDep, model: str) -> AsyncIterator[None]:
    """Bounds the requests holding upload bytes at once (``UploadSlots``), so gateway memory
    stays under ``max_concurrent_uploads * max_upload_bytes``. Requests for models that are
    not served share one name (they are refused with 404)."""
    key = model if model in gateway.models else UNSERVED
    if not gateway.upload_slots.take(key):
        raise unavailable(f"too many uploads in progress for {model}; retry shortly", 1.0)
    try:
        yield
    finally:
        gateway.upload_slots.give_back(key)


UploadSlotDep = Annotated[None, Depends(upload_slot)]

RequestTimeoutMs = Annotated[
    float | None,
    Header(gt=0, description="this request's deadline; default: the model's, see settings"),
]
"""The ``X-Request-Timeout-Ms`` header of the inference routes."""

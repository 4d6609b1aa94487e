"""Dependencies routes declare with ``Annotated``: the gateway's state, the optional API key, the
served model, an upload slot. Each is ``async def``: FastAPI runs a plain ``def`` dependency in
its thread pool, a thread hop per dependency per request (with ``multipart.py``: the gateway's
CPU per image 2.2-2.4 -> 1.8-1.9 ms, bench/README "Scale-out")."""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Header, Path, Request

from .backends.base import Backend
from .dispatcher import Dispatcher
from .errors import ApiError, unavailable
from .metrics import UNKNOWN_MODEL as UNSERVED
from .metrics import GatewayMetrics
from .schemas import ModelInfo
from .settings import UPLOAD_COPIES, GatewaySettings


@dataclass
class Gateway:
    settings: GatewaySettings
    backend: Backend
    dispatcher: Dispatcher
    metrics: GatewayMetrics
    models: dict[str, ModelInfo]
    upload_slots: UploadSlots = field(init=False)

    def __post_init__(self) -> None:
        self.upload_slots = UploadSlots(
            self.settings.max_concurrent_uploads,
            list(self.models),
            self.settings.upload_memory_bytes(),
            self.settings.max_concurrent_decodes,
        )


class UploadSlots:
    """Requests holding upload bytes (reading, queued or in a batch): at most ``total`` at once,
    and no served model more than ``per_model``, which leaves every other model a reserve of
    ``total / (2 * models)`` slots. Found by the soak: while one model's worker restarted, its
    waiting requests took every slot and the other, healthy model was answered 503.

    Uploads still arriving after their first second (``slow``) hold at most ``total - reserve``
    of them: a quarter stays for uploads that arrive at once, whatever slow clients do.

    With a memory budget (``GatewaySettings.upload_memory_bytes``), each slot also reserves what
    its body may cost at once (``UPLOAD_COPIES`` times its declared length, the upload limit when
    it declares none): 64 slots of 10 MiB were ~1.9 GiB against a 1 GiB pod. ``decoding``
    bounds the bodies being parsed at once, whose objects may outgrow them (JSON numbers)."""

    def __init__(
        self, total: int, models: list[str], memory_bytes: int | None, decodes: int
    ) -> None:
        self.total = total
        reserve = total // (2 * len(models)) if len(models) > 1 else 0
        self.per_model = max(1, total - reserve * (len(models) - 1))
        self.max_slow = max(1, total - total // 4)
        self.memory_bytes = memory_bytes
        self.held: Counter[str] = Counter()
        self.reserved = 0
        self.slow = 0
        self.decoding = asyncio.Semaphore(decodes)

    def take(self, model: str, cost: int = 0) -> bool:
        """One slot for a request to ``model`` whose body may cost ``cost`` bytes, if there is
        one."""
        if sum(self.held.values()) >= self.total or self.held[model] >= self.per_model:
            return False
        if self.memory_bytes is not None and self.reserved + cost > self.memory_bytes:
            return False
        self.held[model] += 1
        self.reserved += cost
        return True

    def give_back(self, model: str, cost: int = 0) -> None:
        self.held[model] -= 1
        self.reserved -= cost


@dataclass
class UploadSlot:
    """One request's slot; ``slow_down`` when its body is still arriving after the first
    second."""

    slots: UploadSlots
    model: str
    cost: int = 0
    slow: bool = False

    def slow_down(self) -> bool:
        """Whether this upload may go on arriving slowly (a slow place was free)."""
        if not self.slow:
            if self.slots.slow >= self.slots.max_slow:
                return False
            self.slots.slow += 1
            self.slow = True
        return True

    def give_back(self) -> None:
        if self.slow:
            self.slots.slow -= 1
        self.slots.give_back(self.model, self.cost)


async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def require_api_key(
    gateway: GatewayDep, x_api_key: Annotated[str | None, Header()] = None
) -> None:
    """Compared as the bytes the client sent (Starlette decodes headers as latin-1, so encoding
    back gives them) with the key's UTF-8: a non-ASCII key sent as UTF-8 matches."""
    expected = gateway.settings.api_key
    if expected and not (
        x_api_key and secrets.compare_digest(x_api_key.encode("latin-1"), expected.encode("utf-8"))
    ):
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")


ApiKeyDep = Annotated[None, Depends(require_api_key)]


async def served_model(
    gateway: GatewayDep,
    _: ApiKeyDep,  # before the 404, which names the served models
    model: Annotated[str, Path(description="a served model, see GET /v1/models")],
) -> str:
    """The path's model, or 404 naming the served ones."""
    if model not in gateway.models:
        raise ApiError(
            404,
            "model_not_found",
            f"model {model!r} is not served; served: {', '.join(gateway.models)}",
        )
    return model


ServedModel = Annotated[str, Depends(served_model)]


async def upload_slot(
    request: Request, gateway: GatewayDep, model: str
) -> AsyncIterator[UploadSlot]:
    """Bounds the requests holding upload bytes at once (``UploadSlots``): their count, and
    with a memory limit the bytes their bodies may cost. Requests for models that are not
    served share one name (they are refused with 404)."""
    key = model if model in gateway.models else UNSERVED
    limit = gateway.settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    cost = UPLOAD_COPIES * min(int(declared) if declared.isdigit() else limit, limit)
    if not gateway.upload_slots.take(key, cost):
        raise unavailable(
            f"too many uploads in progress for {model}; retry shortly", 1.0, "too_many_uploads"
        )
    slot = UploadSlot(gateway.upload_slots, key, cost)
    try:
        yield slot
    finally:
        slot.give_back()


UploadSlotDep = Annotated[UploadSlot, Depends(upload_slot)]

RequestTimeoutMs = Annotated[
    float | None,
    Header(gt=0, description="this request's deadline; default: the model's, see settings"),
]
"""The ``X-Request-Timeout-Ms`` header of the inference routes."""

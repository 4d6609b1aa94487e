"""Dependencies routes declare with ``Annotated``: the gateway's state and the optional API key."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from .backends.base import Backend
from .dispatcher import Dispatcher
from .errors import ApiError
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


def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def require_api_key(gateway: GatewayDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    expected = gateway.settings.api_key
    if expected and not (x_api_key and secrets.compare_digest(x_api_key, expected)):
        raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")


ApiKeyDep = Annotated[None, Depends(require_api_key)]

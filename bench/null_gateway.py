"""The gateway over a backend that answers at once: what the gateway alone costs per image
(``bench.capacity`` runs it as ``python -m bench.null_gateway --port PORT``)."""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from service.app import create_app
from service.schemas import READY
from service.settings import GatewaySettings


class NullBackend:
    """Every image gets the same prediction, at once: no decode, no model, no network."""

    def __init__(self, models: list[str]) -> None:
        self.models = models

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def classify(self, model: str, images: list[bytes], top_k: int) -> list[dict[str, Any]]:
        return [{"predictions": [{"index": 0, "label": "null", "score": 1.0}]} for _ in images]

    async def readiness(self) -> dict[str, str]:
        return dict.fromkeys(self.models, READY)

    def runtimes(self) -> dict[str, str]:
        return dict.fromkeys(self.models, "null")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    settings = GatewaySettings(models=["eca_resnet50"], queue_limit=1024)
    app = create_app(settings, NullBackend(settings.models))  # type: ignore[arg-type]
    uvicorn.run(app, host="127.0.0.1", port=parser.parse_args().port, log_level="warning")

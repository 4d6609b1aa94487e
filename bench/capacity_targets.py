"""What ``bench.capacity`` measures side by side (``TARGETS``, documented there) and how a request
reaches each: through a gateway's ``/v1`` route, or to TorchServe directly."""

from __future__ import annotations

import httpx

from model_store.torchserve.launcher import TorchServe
from perf.load import OpenSend
from perf.stack import gateway_env, post_direct

TARGETS = (
    "gateway-deadline",
    "gateway-deadline-pipelined",
    "gateway-fixed",
    "torchserve-direct",
    "inprocess",
)


def make_senders(
    client: httpx.AsyncClient, urls: dict[str, str], model: str, direct_server: TorchServe
) -> dict[str, OpenSend]:
    def gateway(url: str) -> OpenSend:
        async def send(data: bytes) -> int:
            response = await client.post(
                f"{url}/v1/models/{model}/classify",
                content=data,
                headers={"Content-Type": "image/jpeg"},
            )
            return response.status_code

        return send

    async def direct(data: bytes) -> int:
        response = await post_direct(client, direct_server, f"/predictions/{model}", content=data)
        return response.status_code

    return {t: direct if t == "torchserve-direct" else gateway(urls[t]) for t in urls}


def deep_queue_gateway(model: str, server: TorchServe) -> dict[str, str]:
    """A gateway in front of ``server``, queue deep enough for the highest rates."""
    return gateway_env(server, [model]) | {"GATEWAY_QUEUE_LIMIT": "256"}

"""Which TorchServe endpoints serve which model: found (``endpoints.Discovery``) and checked
in rounds, one round at a time, every ``refresh_s`` in the background. A probe reads the last
round and never waits on a worker (one hung worker made rounds outlast the probe's timeout,
and every gateway replica went NotReady at once)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx

from contract.protocol import model_ready, ready_workers

from ..schemas import READY
from .base import WorkerFacts, serving_mismatch
from .endpoints import Discovery, Endpoint, EndpointSet
from .torchserve_keys import KeyedRequests, KeyRefused

log = logging.getLogger(__name__)


class ReadinessChecks:
    def __init__(
        self,
        models: list[str],
        discovery: Discovery,
        found: EndpointSet,
        requests: KeyedRequests,
        timeout_s: float,
        max_batch_size: int,
        refresh_s: float,
    ) -> None:
        self.models = models
        self.discovery = discovery
        self.found = found
        self.requests = requests
        self.timeout_s = timeout_s
        self.max_batch_size = max_batch_size
        self.refresh_s = refresh_s
        self._round: asyncio.Future[None] | None = None
        self._checked = False
        self._refresher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Finds the endpoints and checks them now, then every ``refresh_s``: an endpoint
        added while the gateway runs gets work within seconds, one that goes away gets none."""
        await self.readiness()
        self._refresher = asyncio.create_task(self._keep_current(), name="endpoint-refresh")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)

    async def _keep_current(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.check_all()
            except Exception:  # the next round tries again; serving goes on meanwhile
                log.exception("checking the TorchServe endpoints failed")

    async def readiness(self) -> dict[str, str]:
        """Per model: ready when at least one endpoint has it ready (``protocol.model_ready``),
        else the first endpoint's reason, as of the last round of checks."""
        if not self._checked:
            await self.check_all()
        return {model: self.state(model) for model in self.models}

    async def check_all(self) -> None:
        """Finds the endpoints again and asks each for every model's state: one round at a
        time, which every caller arriving meanwhile waits for instead of starting another
        (a caller that gives up does not cancel it)."""
        if self._round is None or self._round.done():
            self._round = asyncio.ensure_future(self._find_and_check())
        await asyncio.shield(self._round)

    async def _find_and_check(self) -> None:
        try:
            self.found.update(await self.discovery.addresses())
        except OSError as exc:  # a DNS answer missed: keep serving the endpoints known
            log.warning(
                "finding the TorchServe endpoints failed (%s); keeping %d", exc, len(self.found)
            )
        await asyncio.gather(
            *(self._check(endpoint, model) for endpoint in self.found for model in self.models)
        )
        self._checked = True

    def state(self, model: str) -> str:
        endpoints = list(self.found)
        if not endpoints:
            return f"no TorchServe found at {self.discovery.host}"
        if any(endpoint.ready(model) for endpoint in endpoints):
            return READY
        return endpoints[0].states[model]

    async def _describe(
        self, endpoint: Endpoint, model: str, customized: bool
    ) -> tuple[int, dict[str, Any]]:
        """TorchServe's description of ``model``; ``customized`` asks its worker too (the
        handler's ``describe_handle``: a round trip to a worker that may be busy, so once)."""
        response = await self.requests.send(
            "management",
            endpoint,
            lambda headers: self.requests.client.get(
                f"{endpoint.address.management_url}/models/{model}",
                params={"customized": "true"} if customized else None,
                headers=headers,
                timeout=self.timeout_s,
            ),
        )
        return response.status_code, response.json()[0] if response.status_code == 200 else {}

    async def _check(self, endpoint: Endpoint, model: str) -> None:
        endpoint.states[model] = await self._model_state(endpoint, model)

    async def _model_state(self, endpoint: Endpoint, model: str) -> str:
        """Ready: a READY worker whose batching agrees with the gateway's (checked once per
        worker start against what the worker itself reports)."""
        try:
            status, description = await self._describe(endpoint, model, customized=False)
            endpoint.workers[model] = ready_workers(description)
            if not model_ready(description):
                endpoint.facts.pop(model, None)
                return f"no ready worker (HTTP {status})"
            if model not in endpoint.facts:
                _, described = await self._describe(endpoint, model, customized=True)
                reported = described["customizedMetadata"]  # JSON text in some versions
                endpoint.facts[model] = WorkerFacts.model_validate(
                    (json.loads(reported) if isinstance(reported, str) else reported)
                    | {"batch_size": described["batchSize"]}
                )
        except KeyRefused as exc:
            return str(exc)
        except (httpx.HTTPError, ValueError, TypeError, LookupError, AttributeError) as exc:
            return f"TorchServe unreachable: {type(exc).__name__}"
        if mismatch := serving_mismatch(endpoint.facts[model], self.max_batch_size):
            log.error("%s cannot be served as configured: %s", model, mismatch)
            return f"misconfigured: {mismatch}"
        return READY

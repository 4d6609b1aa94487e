"""Where a model's TorchServe workers are, and which of them takes the next batch.

A Kubernetes Service balances connections, not requests: the few connections a gateway keeps
open land on a few pods, and pods the autoscaler adds never get work. So the gateway finds every
worker itself: a fixed list of addresses (local runs), or every address a DNS name resolves to,
re-resolved every few seconds (a headless Service's A/AAAA records, compose's service name
under ``--scale``). DNS is the standard path that needs no API access from the gateway pod (the
EndpointSlice API would need a service account, which the restricted pods do not mount).

Each endpoint keeps its own state per model: readiness and ready workers, circuit breaker,
batches in flight and what it has answered; a batch goes to the ready endpoint with the fewest
batches in flight.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ..schemas import READY, EndpointStatus
from ..settings import split_urls
from .base import WorkerFacts
from .circuit import CircuitBreaker

UNCHECKED = "not checked yet"

Resolver = Callable[[str], Awaitable[list[str]]]
"""A host name -> its addresses (IPv4 or IPv6 text)."""


async def resolve(host: str) -> list[str]:
    """Every address ``host`` has (A and AAAA), each once, in a stable order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


@dataclass(frozen=True)
class Address:
    """One TorchServe: where to send batches and where to ask for its models' state."""

    inference_url: str
    management_url: str


def _with_host(url: str, host: str) -> str:
    parts = urlsplit(url)
    if ipaddress.ip_address(host).version == 6:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc)).rstrip("/")


class Discovery:
    """The TorchServe addresses, as of now: the inference and management URL lists paired in
    order, or (``dns``) every address of the one inference URL's host name, each with the
    inference and management ports of the URLs given."""

    def __init__(
        self,
        inference_urls: str,
        management_urls: str,
        dns: bool = False,
        resolver: Resolver = resolve,
    ) -> None:
        inference, management = split_urls(inference_urls), split_urls(management_urls)
        if not inference or len(inference) != len(management):
            raise ValueError(
                f"{len(inference)} inference URLs and {len(management)} management URLs: "
                "give one management URL per inference URL"
            )
        if dns and len(inference) != 1:
            raise ValueError("DNS discovery resolves one inference URL's host name")
        self.static = [Address(i, m) for i, m in zip(inference, management, strict=True)]
        self.dns = dns
        self.resolver = resolver

    @property
    def host(self) -> str:
        return urlsplit(self.static[0].inference_url).hostname or ""

    async def addresses(self) -> list[Address]:
        if not self.dns:
            return list(self.static)
        template = self.static[0]
        return [
            Address(_with_host(template.inference_url, ip), _with_host(template.management_url, ip))
            for ip in await self.resolver(self.host)
        ]


class Endpoint:
    """One TorchServe's state, per model: what its last readiness check said, its circuit
    breaker, the batches in flight on it, and what it has answered."""

    def __init__(
        self, address: Address, models: list[str], breakers: Callable[[], CircuitBreaker]
    ) -> None:
        self.address = address
        self.breakers = {model: breakers() for model in models}
        self.states = dict.fromkeys(models, UNCHECKED)
        self.workers: Counter[str] = Counter()  # ready workers, as of the last check
        self.facts: dict[str, WorkerFacts] = {}
        self.in_flight: Counter[str] = Counter()
        self.batches: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.busy_seconds: Counter[str] = Counter()

    @property
    def name(self) -> str:
        return self.address.inference_url

    def ready(self, model: str) -> bool:
        return self.states[model] == READY

    def status(self, model: str) -> EndpointStatus:
        return EndpointStatus(
            endpoint=self.name,
            status=self.states[model],
            workers=self.workers[model] if self.ready(model) else 0,
            in_flight=self.in_flight[model],
            batches=self.batches[model],
            failures=self.failures[model],
            busy_seconds=round(self.busy_seconds[model], 6),
        )


class EndpointSet:
    """The endpoints found so far, kept current by ``update``; ``candidates`` orders them for
    a model's next batch."""

    def __init__(self, models: list[str], breakers: Callable[[], CircuitBreaker]) -> None:
        self.models = models
        self.breakers = breakers
        self._endpoints: dict[Address, Endpoint] = {}
        self._turn = itertools.count()

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(list(self._endpoints.values()))

    def __len__(self) -> int:
        return len(self._endpoints)

    def update(self, addresses: list[Address]) -> None:
        """Endpoints for new addresses are added (unchecked until their readiness is asked);
        those whose address is gone are dropped (a batch in flight on one still ends as its
        TorchServe answers)."""
        for address in addresses:
            if address not in self._endpoints:
                self._endpoints[address] = Endpoint(address, self.models, self.breakers)
        for gone in set(self._endpoints) - set(addresses):
            del self._endpoints[gone]

    def ready_workers(self, model: str) -> int:
        return sum(endpoint.workers[model] for endpoint in self if endpoint.ready(model))

    def candidates(self, model: str) -> list[Endpoint]:
        """The ready endpoints, fewest batches of ``model`` in flight first (ties in turn); all
        of them while none is known ready, so a worker that is not yet or no longer checked is
        still tried, and its breaker judges it."""
        endpoints = list(self)
        ready = [endpoint for endpoint in endpoints if endpoint.ready(model)] or endpoints
        if not ready:
            return []
        start = next(self._turn) % len(ready)
        rotated = ready[start:] + ready[:start]
        return sorted(rotated, key=lambda endpoint: endpoint.in_flight[model])

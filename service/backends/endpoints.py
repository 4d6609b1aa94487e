"""Where a model's TorchServe workers are, and which of them takes the next batch.

A Kubernetes Service balances connections, not requests: the few connections a gateway keeps
open land on a few pods, and pods the autoscaler adds never get work. So the gateway finds every
worker itself: a fixed list of addresses (local runs), or every address a DNS name resolves to,
re-resolved every few seconds (a headless Service's A/AAAA records, compose's service name
under ``--scale``). DNS is the standard path that needs no API access from the gateway pod (the
EndpointSlice API would need a service account, which the restricted pods do not mount).

Each endpoint keeps its own state per model: readiness and ready workers, circuit breaker,
batches in flight and what it has answered, and its measured time per image; a batch goes to the
ready endpoint with the least outstanding work (images in flight x its time per image): replicas
of unequal speed (a shared node, a CPU-limited pod, another CPU model) each get the share they
can answer in time.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import itertools
import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from ..schemas import READY, EndpointStatus
from ..settings import split_urls
from .base import WorkerFacts
from .circuit import CircuitBreaker, State

log = logging.getLogger(__name__)
UNCHECKED = "not checked yet"
LEARNING_RATE = 0.3
"""Weight of a batch's time per image in an endpoint's running average: a few batches follow a
change (a noisy neighbour), one slow batch does not swing it."""

AS_GOOD = 1.6
"""Predicted finishes within this factor of the best count as equal, and take turns. Measured
speeds wobble: jitter, and time per image is not constant in the batch size (a worker's fixed
cost per batch: 10 + 14 x b ms is 24 ms per image alone and 15 in eights, 1.57x). Without the
margin, at light load, the replica measured fastest would take every batch and the others would
never be measured again (seen: 15 of 16 replicas used at 1.25); a replica twice as slow (one on
a shared core) is still told apart."""
Outcome = Literal["answered", "failed", None]
Resolver = Callable[[str], Awaitable[list[str]]]
"""A host name -> its addresses (IPv4 or IPv6 text)."""


DNS_TIMEOUT_S = 2.0
"""A lookup that takes longer fails (the endpoints known are kept until the next one)."""
_DNS_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="dns")
"""Lookups block a thread: their own, not the pool that validates uploads."""
MAX_ENDPOINTS = 64
"""Addresses taken from one answer (each is asked for its state every round, with the key)."""


async def resolve(host: str) -> list[str]:
    """Every address ``host`` has (A and AAAA), each once, in a stable order, within
    ``DNS_TIMEOUT_S``. Link-local addresses with a scope (``fe80::1%eth0``) are left out: no
    worker Service hands them out, and they do not fit in a URL as given."""
    lookup = asyncio.get_running_loop().run_in_executor(
        _DNS_THREADS, functools.partial(socket.getaddrinfo, host, None, type=socket.SOCK_STREAM)
    )
    infos = await asyncio.wait_for(lookup, DNS_TIMEOUT_S)
    return sorted({str(info[4][0]) for info in infos if "%" not in str(info[4][0])})


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
        self.images_in_flight: Counter[str] = Counter()
        self.image_seconds: dict[str, float] = {}  # running average of answered batches
        self.batches: Counter[str] = Counter()
        self.failures: Counter[str] = Counter()
        self.busy_seconds: Counter[str] = Counter()

    @property
    def name(self) -> str:
        return self.address.inference_url

    def ready(self, model: str) -> bool:
        return self.states[model] == READY

    def sent(self, model: str, images: int) -> None:
        self.in_flight[model] += 1
        self.images_in_flight[model] += images

    def ended(self, model: str, images: int, seconds: float, outcome: Outcome) -> None:
        """A batch sent with ``sent`` is over: ``answered`` (its time measures this endpoint's
        speed, and the answer shows the model ready here: a restarted worker takes batches
        again at once, not at the next round of checks), ``failed`` here, or neither (it never
        reached the endpoint, or was cancelled)."""
        self.in_flight[model] -= 1
        self.images_in_flight[model] -= images
        self.busy_seconds[model] += seconds
        if outcome == "answered":
            self.states[model] = READY
            self.batches[model] += 1
            per_image = seconds / max(1, images)
            known = self.image_seconds.get(model, per_image)
            self.image_seconds[model] = known + LEARNING_RATE * (per_image - known)
        elif outcome == "failed":
            self.failures[model] += 1

    def outstanding(self, model: str, images: int, unknown_s: float) -> float:
        """Seconds of work queued here once ``images`` more are sent (``unknown_s`` per image
        until it has answered a batch)."""
        per_image = self.image_seconds.get(model, unknown_s)
        return (self.images_in_flight[model] + images) * per_image

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
        TorchServe answers). At most ``MAX_ENDPOINTS`` are kept."""
        if len(addresses) > MAX_ENDPOINTS:
            log.warning("%d TorchServe addresses; using %d", len(addresses), MAX_ENDPOINTS)
            addresses = addresses[:MAX_ENDPOINTS]
        for address in addresses:
            if address not in self._endpoints:
                self._endpoints[address] = Endpoint(address, self.models, self.breakers)
        for gone in set(self._endpoints) - set(addresses):
            del self._endpoints[gone]

    def ready_workers(self, model: str) -> int:
        """Workers of the ready endpoints whose breaker is not open: an open breaker takes
        no batch, so its workers add no concurrency."""
        return sum(
            endpoint.workers[model]
            for endpoint in self
            if endpoint.ready(model) and endpoint.breakers[model].state is not State.OPEN
        )

    def candidates(self, model: str, images: int = 1) -> list[Endpoint]:
        """The ready endpoints, least outstanding work for a batch of ``images`` first (those
        within ``AS_GOOD`` of the least in turn; one not measured yet counts as the average of
        those measured). While none is ready, those not checked yet (before the first round:
        its breaker judges it), never one a check found not serving the model: an address
        that answers DNS but is no worker of ours gets no user image."""
        endpoints = list(self)
        ready = [e for e in endpoints if e.ready(model)] or [
            e for e in endpoints if e.states[model] == UNCHECKED
        ]
        if not ready:
            return []
        start = next(self._turn) % len(ready)
        rotated = ready[start:] + ready[:start]
        measured = [e.image_seconds[model] for e in rotated if model in e.image_seconds]
        unknown_s = sum(measured) / len(measured) if measured else 1.0
        work = {e: e.outstanding(model, images, unknown_s) for e in rotated}
        best = min(work.values())
        return sorted(rotated, key=lambda e: 0.0 if work[e] <= best * AS_GOOD else work[e])

"""Finding TorchServe endpoints and spreading batches over them, against a resolver and HTTP
transport the tests control (no network). The same against real TorchServes:
``test_scaleout.py``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from pydantic import ValidationError

import service.backends.endpoints as endpoints_module
from contract.keys import KeyRing
from service.backends.base import BackendUnavailable
from service.backends.circuit import CircuitBreaker
from service.backends.endpoints import MAX_ENDPOINTS, Address, Discovery, EndpointSet, resolve
from service.backends.torchserve_client import TorchServeBackend
from service.inputs import Upload
from service.metrics import GatewayMetrics
from service.schemas import READY
from service.settings import GatewaySettings

MODEL = "eca_resnet50"
GOOD = {"predictions": [{"index": 1, "label": "cat", "score": 0.75}]}


def described(ready: bool = True, workers: int = 1) -> list[dict[str, object]]:
    return [
        {
            "batchSize": 1,
            "workers": [{"status": "READY" if ready else "UNLOADING"}] * workers,
            "customizedMetadata": {"runtime": "aot", "batch_buckets": [1, 2, 4, 8]},
        }
    ]


class Fleet:
    """TorchServes behind a mock transport, by host: which answer, which refuse connections,
    and what each received."""

    def __init__(self, *hosts: str) -> None:
        self.hosts = list(hosts)  # what DNS answers
        self.down: set[str] = set()  # connection refused
        self.dropping: set[str] = set()  # the connection drops after the batch was sent
        self.batches: Counter[str] = Counter()
        self.workers: Counter[str] = Counter(dict.fromkeys(hosts, 1))  # READY workers each
        self.delay_s = 0.0
        self.delays: dict[str, float] = {}  # per host, instead of delay_s

    async def resolve(self, host: str) -> list[str]:
        assert host == "workers.test"
        return list(self.hosts)

    async def answer(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        if host in self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path.startswith("/models/"):
            return httpx.Response(200, json=described(workers=self.workers[host]))
        if host in self.dropping:
            self.batches[host] += 1
            raise httpx.ReadError("connection reset", request=request)
        await asyncio.sleep(self.delays.get(host, self.delay_s))
        self.batches[host] += 1
        return httpx.Response(200, json={"results": [GOOD]})

    def backend(self, discovery: Discovery) -> TorchServeBackend:
        return TorchServeBackend(
            [MODEL],
            discovery,
            KeyRing(None),
            timeout_s=5,
            breakers=lambda: CircuitBreaker(3, cooldown_s=30),
            refresh_s=0.05,
            transport=httpx.MockTransport(self.answer),
        )

    def dns_backend(self) -> TorchServeBackend:
        return self.backend(
            Discovery("http://workers.test:8080", "http://workers.test:8081", True, self.resolve)
        )


async def until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Waits for what a refresh round changes (rounds every 50 ms here), however loaded the
    machine: a fixed sleep either wastes time or, on a busy CI machine, comes too soon."""
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.01)


async def classify_many(backend: TorchServeBackend, count: int) -> list[object]:
    """Each batch's answers as the worker wrote them, or the exception it raised."""
    batch = [Upload(b"img", 1)]
    answers = await asyncio.gather(
        *(backend.classify(MODEL, batch, 5) for _ in range(count)), return_exceptions=True
    )
    return [
        a if isinstance(a, BaseException) else [r.model_dump(exclude_none=True) for r in a]
        for a in answers
    ]


def test_a_static_list_pairs_inference_and_management_urls_in_order():
    discovery = Discovery("http://a:8080/, http://b:9080", "http://a:8081,http://b:9081")
    addresses = asyncio.run(discovery.addresses())
    assert addresses == [
        Address("http://a:8080", "http://a:8081"),
        Address("http://b:9080", "http://b:9081"),
    ]
    with pytest.raises(ValueError, match="one management URL per inference URL"):
        Discovery("http://a:8080,http://b:8080", "http://a:8081")


def test_dns_discovery_makes_one_endpoint_per_address_with_the_urls_ports():
    async def resolver(host: str) -> list[str]:
        return ["10.0.0.7", "fd00::5"]

    discovery = Discovery("http://workers:8080", "http://workers:8081", True, resolver)
    assert asyncio.run(discovery.addresses()) == [
        Address("http://10.0.0.7:8080", "http://10.0.0.7:8081"),
        Address("http://[fd00::5]:8080", "http://[fd00::5]:8081"),
    ]


def test_candidates_are_ready_endpoints_least_work_first_and_ties_take_turns():
    found = EndpointSet([MODEL], lambda: CircuitBreaker(3, 30))
    found.update([Address(f"http://{h}:8080", f"http://{h}:8081") for h in "abc"])
    a, b, c = found
    assert {found.candidates(MODEL)[0].name for _ in range(6)} == {a.name, b.name, c.name}
    c.states[MODEL] = "worker not ready"  # checked: no image goes to it while others are unchecked
    assert c not in found.candidates(MODEL)
    a.states[MODEL] = b.states[MODEL] = READY
    a.sent(MODEL, 2)
    assert [e.name for e in found.candidates(MODEL)] == [b.name, a.name]
    a.ended(MODEL, 2, 0.4, "answered")  # a: 0.2 s per image
    b.sent(MODEL, 4)
    b.ended(MODEL, 4, 0.2, "answered")  # b: 4x faster
    b.sent(MODEL, 1)  # 2 images' work on b (0.1 s) is half of 1 on a (0.2 s)
    assert [e.name for e in found.candidates(MODEL, images=1)] == [b.name, a.name]
    b.sent(MODEL, 5)  # now 7 on b (0.35 s) against 1 on a
    assert [e.name for e in found.candidates(MODEL, images=1)] == [a.name, b.name]
    b.ended(MODEL, 2, 0.1, "answered")  # 4 left on b: 0.25 s with the next, as good: in turn
    assert {found.candidates(MODEL, images=1)[0].name for _ in range(4)} == {a.name, b.name}
    found.update([a.address])  # b and c gone
    assert [e.name for e in found.candidates(MODEL)] == [a.name]


def test_an_endpoint_not_measured_yet_counts_as_the_average():
    found = EndpointSet([MODEL], lambda: CircuitBreaker(3, 30))
    found.update([Address(f"http://{h}:8080", f"http://{h}:8081") for h in "ab"])
    a, b = found
    a.states[MODEL] = b.states[MODEL] = READY
    a.sent(MODEL, 8)
    a.ended(MODEL, 8, 0.8, "answered")  # 0.1 s per image
    a.sent(MODEL, 8)  # 0.8 s queued on a; b (new, unmeasured) is taken as 0.1 s per image
    assert [e.name for e in found.candidates(MODEL, images=8)] == [b.name, a.name]
    b.sent(MODEL, 24)
    assert [e.name for e in found.candidates(MODEL, images=8)] == [a.name, b.name]
    a.ended(MODEL, 8, 5.0, "failed")  # a failure teaches nothing of speed
    assert a.image_seconds[MODEL] == pytest.approx(0.1) and a.failures[MODEL] == 1


def test_batches_spread_over_every_endpoint_dns_finds_and_reach_one_added_later():
    fleet = Fleet("10.0.0.1", "10.0.0.2")
    fleet.delay_s = 0.02

    async def scenario() -> None:
        backend = fleet.dns_backend()
        await backend.start()
        assert backend.ready_workers(MODEL) == 2
        assert all(r == [GOOD] for r in await classify_many(backend, 40))
        assert set(fleet.batches) == {"10.0.0.1", "10.0.0.2"}
        assert min(fleet.batches.values()) >= 10  # equal speed, least work: about half each

        fleet.hosts.append("10.0.0.3")  # a replica added: found by the next refresh
        fleet.workers["10.0.0.3"] = 1
        await until(lambda: backend.ready_workers(MODEL) == 3)
        fleet.batches.clear()
        assert all(r == [GOOD] for r in await classify_many(backend, 30))
        assert fleet.batches["10.0.0.3"] >= 5

        fleet.hosts.remove("10.0.0.1")  # scaled in: no more work for it
        await until(lambda: len(backend.endpoints()[MODEL]) == 2)
        fleet.batches.clear()
        await classify_many(backend, 10)
        assert "10.0.0.1" not in fleet.batches
        assert [s.endpoint for s in backend.endpoints()[MODEL]] == [
            "http://10.0.0.2:8080",
            "http://10.0.0.3:8080",
        ]
        await backend.close()

    asyncio.run(scenario())


def test_a_slower_replica_gets_a_smaller_share_of_the_batches():
    """Replicas of unequal speed (one on a shared node): batches follow the least outstanding
    work, so the faster one answers more of them and none waits behind the slow one."""
    fleet = Fleet("10.0.0.1", "10.0.0.2")
    fleet.delays = {"10.0.0.1": 0.06, "10.0.0.2": 0.015}

    async def scenario() -> None:
        backend = fleet.dns_backend()
        await backend.start()
        for _ in range(20):  # a steady stream, four batches at a time
            assert all(r == [GOOD] for r in await classify_many(backend, 4))
        await backend.close()

    asyncio.run(scenario())
    assert fleet.batches["10.0.0.2"] >= 2 * fleet.batches["10.0.0.1"] > 0


def test_the_concurrency_follows_each_endpoints_ready_workers():
    """A TorchServe with two workers takes two batches at once: the dispatcher's allowance is
    per ready worker, and an endpoint whose workers are all gone adds none."""
    fleet = Fleet("10.0.0.1", "10.0.0.2")
    fleet.workers["10.0.0.2"] = 2

    async def scenario() -> None:
        backend = fleet.dns_backend()
        await backend.start()
        assert backend.ready_workers(MODEL) == 3
        assert [s.workers for s in backend.endpoints()[MODEL]] == [1, 2]
        fleet.workers["10.0.0.2"] = 0  # its workers died: not ready, no allowance
        await until(lambda: backend.ready_workers(MODEL) == 1)
        assert [s.workers for s in backend.endpoints()[MODEL]] == [1, 0]
        await backend.close()

    asyncio.run(scenario())


def test_a_refused_connection_sends_the_batch_to_another_endpoint():
    fleet = Fleet("10.0.0.1", "10.0.0.2")

    async def scenario() -> None:
        backend = fleet.dns_backend()
        await backend.start()
        fleet.down.add("10.0.0.1")  # died after the last check: still a candidate
        assert all(r == [GOOD] for r in await classify_many(backend, 6))
        assert fleet.batches == Counter({"10.0.0.2": 6})
        fleet.down.add("10.0.0.2")  # nowhere left: an honest 503
        with pytest.raises(BackendUnavailable, match="cannot reach TorchServe"):
            await backend.classify(MODEL, [Upload(b"img", 1)], 5)
        await backend.close()

    asyncio.run(scenario())


def test_a_batch_that_may_have_been_computed_is_never_sent_twice():
    fleet = Fleet("10.0.0.1", "10.0.0.2")
    fleet.dropping.add("10.0.0.1")

    async def scenario() -> None:
        backend = fleet.dns_backend()
        await backend.start()
        outcomes = await classify_many(backend, 8)
        failed = [o for o in outcomes if isinstance(o, BackendUnavailable)]
        assert failed and all(o.reached for o in failed)
        assert fleet.batches["10.0.0.1"] == len(failed)  # each failed batch sent once
        assert len(outcomes) - len(failed) == fleet.batches["10.0.0.2"]
        failures = {s.endpoint: s.failures for s in backend.endpoints()[MODEL]}
        assert failures == {"http://10.0.0.1:8080": len(failed), "http://10.0.0.2:8080": 0}
        await backend.close()

    asyncio.run(scenario())


def test_a_failed_dns_answer_keeps_the_endpoints_known():
    fleet = Fleet("10.0.0.1")

    async def scenario() -> None:
        backend = fleet.dns_backend()
        await backend.start()

        failed = []

        async def failing(host: str) -> list[str]:
            failed.append(host)
            raise OSError("Temporary failure in name resolution")

        backend.checks.discovery.resolver = failing
        await until(lambda: len(failed) >= 2)  # two refresh rounds have missed the answer
        assert await backend.readiness() == {MODEL: READY}
        assert await classify_many(backend, 2) == [[GOOD], [GOOD]]
        await backend.close()

    asyncio.run(scenario())


def test_endpoint_series_follow_the_endpoints_found():
    fleet = Fleet("10.0.0.1", "10.0.0.2")

    async def scenario() -> str:
        backend = fleet.dns_backend()
        await backend.start()
        await classify_many(backend, 4)
        fleet.hosts.remove("10.0.0.2")
        await until(lambda: len(backend.endpoints()[MODEL]) == 1)
        metrics = GatewayMetrics()
        metrics.watch_endpoints(backend)
        await backend.close()
        from prometheus_client import generate_latest

        return generate_latest(metrics.registry).decode()

    exported = asyncio.run(scenario())
    assert f'gateway_backend_endpoints{{model="{MODEL}"}} 1.0' in exported
    assert 'endpoint="http://10.0.0.1:8080"' in exported
    assert "10.0.0.2" not in exported  # gone: no series left behind


def test_a_key_file_with_several_endpoints_is_refused():
    with pytest.raises(ValidationError, match="one TorchServe's keys"):
        GatewaySettings(torchserve_discovery="dns", torchserve_key_file="/run/key_file.json")
    settings = GatewaySettings(
        torchserve_inference_url="http://a:8080,http://b:8080",
        torchserve_management_url="http://a:8081,http://b:8081",
        torchserve_key_file="",
    )
    assert settings.torchserve_key_file is None


def test_dns_answers_are_bounded_timed_and_scoped_addresses_left_out(monkeypatch):
    """A lookup runs on its own threads within ``DNS_TIMEOUT_S`` (it ran on the upload pool
    with no timeout); a scoped link-local address (it raised outside the handled errors) is
    left out; at most ``MAX_ENDPOINTS`` addresses become endpoints."""
    answers = [(socket.AF_INET6, 0, 0, "", ("fe80::1%eth0", 0, 0, 2))] + [
        (socket.AF_INET, 0, 0, "", (f"10.0.{i // 250}.{i % 250}", 0)) for i in range(100)
    ]
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: answers)
    addresses = asyncio.run(resolve("workers"))
    assert len(addresses) == 100 and not any("%" in a for a in addresses)
    found = EndpointSet([MODEL], lambda: CircuitBreaker(3, 30))
    found.update([Address(f"http://{a}:8080", f"http://{a}:8081") for a in addresses])
    assert len(found) == MAX_ENDPOINTS

    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: time.sleep(1) or answers)
    monkeypatch.setattr(endpoints_module, "DNS_TIMEOUT_S", 0.1)
    with pytest.raises(OSError):  # TimeoutError: the endpoints known are kept
        asyncio.run(resolve("workers"))


def test_a_batch_answered_shows_its_endpoint_ready_before_the_next_check():
    """A worker killed and restarted: batches sent before the check saw it go were queued by
    TorchServe and answered once it was back, while the check (every 2 s) still said not
    ready, and for up to 2 s every new request was refused (the soak: ~60 per kill)."""
    found = EndpointSet([MODEL], lambda: CircuitBreaker(3, 30))
    found.update([Address("http://a:8080", "http://a:8081")])
    [a] = found
    a.states[MODEL] = "no ready worker (HTTP 200)"
    assert found.candidates(MODEL) == []
    a.sent(MODEL, 1)
    a.ended(MODEL, 1, 0.2, "answered")
    assert found.candidates(MODEL) == [a]


def test_workers_behind_an_open_breaker_add_no_concurrency():
    """Concurrency per model is its ready workers: an endpoint whose breaker is open takes no
    batch, and counting its workers let batches queue up for it."""
    found = EndpointSet([MODEL], lambda: CircuitBreaker(1, 30))
    found.update([Address(f"http://{h}:8080", f"http://{h}:8081") for h in "ab"])
    for endpoint in found:
        endpoint.states[MODEL], endpoint.workers[MODEL] = READY, 2
    assert found.ready_workers(MODEL) == 4
    a, _ = found
    a.breakers[MODEL].record_failure()
    assert found.ready_workers(MODEL) == 2

"""One gateway, several real TorchServes found by DNS: batches spread over every replica, a
replica added during load gets work within seconds, one killed mid-load loses only what was in
flight on it.

The replicas run as a cluster runs them: each on an address of its own (127.0.0.2-4: all of
127/8 is loopback), every one on the same inference port, its management API behind the
read-only gate on the same gate port, token authorization off, each pinned to a CPU of its own
(in turn over this machine's). The DNS answer is the test's
(``workers.test`` -> the addresses it lists); TorchServe's own request counters say which
replica computed what.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import psutil
import pytest

from contract.keys import KeyRing
from model_store.torchserve.config import CONFIG_TEMPLATE
from model_store.torchserve.host import free_ports
from model_store.torchserve.launcher import TorchServe
from model_store.torchserve.management_gate import ManagementGate
from perf.stack import requests_computed
from service.backends.circuit import CircuitBreaker
from service.backends.endpoints import Discovery
from service.backends.torchserve_client import TorchServeBackend
from service.settings import GatewaySettings

from ..servers import GatewayThread
from .test_gateway_torchserve import labelled_images, send_all, top1

pytestmark = pytest.mark.slow

MODEL = "eca_resnet50"
ADDRESSES = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
HOST = "workers.test"
CPUS = sorted(os.sched_getaffinity(0))


@dataclass
class Replicas:
    inference_port: int
    gate_port: int
    servers: dict[str, TorchServe]
    dns: list[str] = field(default_factory=list)  # what the test's DNS answers

    async def resolve(self, host: str) -> list[str]:
        assert host == HOST
        return list(self.dns)

    def computed(self, address: str) -> float:
        """Inference requests this replica's TorchServe counted (its own metrics)."""
        return requests_computed(self.servers[address].metrics_url)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, tiny_archives) -> Iterator[Replicas]:
    workdir = tmp_path_factory.mktemp("replicas")
    template = workdir / "config.properties"
    template.write_text(CONFIG_TEMPLATE.read_text() + "disable_token_authorization=true\n")
    inference_port, gate_port = free_ports(2)
    servers: dict[str, TorchServe] = {}
    gates: list[ManagementGate] = []
    try:
        for index, address in enumerate(ADDRESSES):
            management, metrics, grpc_inference, grpc_management = free_ports(4)
            servers[address] = TorchServe(
                [MODEL],
                tiny_archives,
                workdir / address,
                host=address,
                inference_port=inference_port,
                management_port=management,
                metrics_port=metrics,
                grpc_ports=(grpc_inference, grpc_management),
                config_template=template,
                cpus=frozenset({CPUS[index % len(CPUS)]}),
            ).start()
            gates.append(
                ManagementGate((address, gate_port), servers[address].management_url).start()
            )
        for server in servers.values():
            server.wait_ready()
        yield Replicas(inference_port, gate_port, servers)
    finally:
        for gate in gates:
            gate.stop()
        for server in servers.values():
            server.stop()


def ready_endpoints(url: str) -> int:
    return httpx.get(f"{url}/readyz", timeout=10).json()["endpoints"][MODEL]


def wait_for_endpoints(url: str, count: int, within_s: float) -> float:
    started = time.monotonic()
    while ready_endpoints(url) != count:
        assert time.monotonic() - started < within_s, f"never {count} ready endpoints"
        time.sleep(0.2)
    return time.monotonic() - started


def test_each_replica_runs_on_its_own_cpu_with_threads_sized_to_it(replicas):
    """``TorchServe(cpus=...)``: the frontend and every worker process run on the CPUs given,
    and the worker sizes its threads to them (one), not to the machine."""
    for index, (address, server) in enumerate(replicas.servers.items()):
        assert server.process is not None
        tree = psutil.Process(server.process.pid)
        processes = [tree, *tree.children(recursive=True)]
        assert len(processes) >= 2  # the frontend and the model's worker
        assert {tuple(p.cpu_affinity()) for p in processes} == {(CPUS[index % len(CPUS)],)}
        described = httpx.get(
            f"http://{address}:{replicas.gate_port}/models/{MODEL}",
            params={"customized": "true"},
            timeout=30,
        ).json()[0]["customizedMetadata"]
        facts = json.loads(described) if isinstance(described, str) else described
        assert facts["threads"] == 1


def test_batches_spread_over_every_replica_found_added_and_killed(replicas):
    replicas.dns[:] = ADDRESSES[:2]
    settings = GatewaySettings(
        models=[MODEL],
        torchserve_discovery="dns",
        torchserve_inference_url=f"http://{HOST}:{replicas.inference_port}",
        torchserve_management_url=f"http://{HOST}:{replicas.gate_port}",
        torchserve_key_file="",
        discovery_interval_s=0.5,
    )
    backend = TorchServeBackend(
        [MODEL],
        Discovery(
            settings.torchserve_inference_url,
            settings.torchserve_management_url,
            dns=True,
            resolver=replicas.resolve,
        ),
        KeyRing(None),
        timeout_s=settings.backend_timeout_s,
        breakers=lambda: CircuitBreaker(settings.breaker_failures, settings.breaker_cooldown_s),
        max_batch_size=settings.max_batch_size,
        refresh_s=settings.discovery_interval_s,
    )
    images, labels = labelled_images(60, seed=11)
    with GatewayThread(settings, backend) as gateway:
        wait_for_endpoints(gateway.url, 2, within_s=10)
        before = {a: replicas.computed(a) for a in ADDRESSES}
        responses = asyncio.run(send_all(gateway.url, MODEL, images, concurrency=8))
        assert [r.status_code for r in responses] == [200] * len(images)
        assert [top1(r) for r in responses] == labels
        computed = {a: replicas.computed(a) - before[a] for a in ADDRESSES}
        assert computed[ADDRESSES[0]] > 0 and computed[ADDRESSES[1]] > 0  # both got work
        assert computed[ADDRESSES[2]] == 0  # not in DNS yet

        replicas.dns.append(ADDRESSES[2])  # scaled out during the run
        found_in = wait_for_endpoints(gateway.url, 3, within_s=10)
        before = {a: replicas.computed(a) for a in ADDRESSES}
        responses = asyncio.run(send_all(gateway.url, MODEL, images, concurrency=12))
        assert [r.status_code for r in responses] == [200] * len(images)
        shares = {a: replicas.computed(a) - before[a] for a in ADDRESSES}
        assert shares[ADDRESSES[2]] > 0
        print(f"third replica found within {found_in:.1f} s; requests computed: {shares}")

        victim = replicas.servers[ADDRESSES[0]]
        answered: list[int] = []
        load = labelled_images(150, seed=12)

        async def load_and_kill() -> tuple[list[httpx.Response], int]:
            task = asyncio.create_task(
                send_all(gateway.url, MODEL, load[0], concurrency=12, answered=answered)
            )
            while len(answered) < 20 and not task.done():
                await asyncio.sleep(0.01)
            assert victim.process is not None
            os.killpg(victim.process.pid, signal.SIGKILL)  # frontend and worker
            unanswered = len(load[0]) - len(answered)
            return await task, unanswered

        responses, unanswered_at_kill = asyncio.run(load_and_kill())
        assert unanswered_at_kill >= 100  # most of the load came after the kill
        failed = [r for r in responses if r.status_code != 200]
        print(f"killed with {unanswered_at_kill} unanswered: {len(failed)} answered 503")
        for response, label in zip(responses, load[1], strict=True):
            if response.status_code == 200:
                assert top1(response) == label
        # only the batch in flight on the killed replica (one batch per endpoint, <= 8
        # images) may fail, honestly; everything after it went to the two others
        assert len(failed) <= settings.max_batch_size
        assert all(r.status_code == 503 for r in failed), [r.text for r in failed]
        assert all(r.json()["error"]["code"] == "unavailable" for r in failed)
        wait_for_endpoints(gateway.url, 2, within_s=10)
        status = httpx.get(f"{gateway.url}/v1/models/{MODEL}/ready", timeout=10).json()
        by_endpoint = {e["endpoint"]: e for e in status["endpoints"]}
        assert by_endpoint[f"http://{ADDRESSES[0]}:{replicas.inference_port}"]["status"] != "ready"
        assert sum(e["batches"] for e in status["endpoints"]) > 0

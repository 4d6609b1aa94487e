"""TorchServe's keys expire (``token_expiration_min``): the gateway, the launcher and a direct
client keep working across expiries of both keys, against a real TorchServe started with short
keys through ``TORCHSERVE_TOKEN_EXPIRATION_MIN``; a key that cannot be renewed is an honest 503,
never a 502 blamed on the worker."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from contract.keys import (
    TOKEN_EXPIRATION_ENV,
    KeyRing,
    bearer,
    key_refused,
    read_key_file,
)
from model_store.torchserve.launcher import TorchServe
from perf.stack import post_direct, start_torchserve
from service.backends.circuit import CircuitBreaker
from service.backends.endpoints import Discovery
from service.backends.torchserve_client import TorchServeBackend

from ..servers import STACK_MODELS, GatewayThread, gateway_settings
from .test_gateway_torchserve import labelled_images, metric, top1

pytestmark = pytest.mark.slow


SHORT_MINUTES = 0.2
"""12-second keys: long enough for a request and its renewal, short enough to see several."""
EXPIRED_MINUTES = 0.05
"""3-second keys: the tests that need an expired key sleep past it."""


@pytest.fixture(scope="module")
def short_keys(tmp_path_factory, tiny_archives):
    """``short_keys(minutes)``: a TorchServe of this module's whose keys live ``minutes`` (set
    through the environment while it starts), one per lifetime, shared by the tests."""
    servers: dict[float, TorchServe] = {}

    def start(minutes: float) -> TorchServe:
        if minutes not in servers:
            with pytest.MonkeyPatch.context() as environment:
                environment.setenv(TOKEN_EXPIRATION_ENV, f"{minutes:g}")
                run_dir = tmp_path_factory.mktemp(f"keys{minutes:g}") / "run"
                servers[minutes] = start_torchserve(list(STACK_MODELS), tiny_archives, run_dir)
        return servers[minutes]

    yield start
    for server in servers.values():
        server.stop()


def test_the_environment_sets_torchserves_key_lifetime(short_keys):
    server = short_keys(SHORT_MINUTES)
    config = (server.run_dir / "config.properties").read_text()
    assert f"token_expiration_min={SHORT_MINUTES:g}" in config
    keys = read_key_file(server.key_file)
    written = server.key_file.stat().st_mtime  # when the newest key was made
    expiries = [keys[kind].expires_at for kind in ("inference", "management")]
    assert 0 < max(expiries) - written <= SHORT_MINUTES * 60 + 1, (expiries, written)
    assert keys["API"].expires_at is None


def test_torchserve_answers_an_expired_key_with_400_invalid_key(short_keys):
    """What the renewal is built on: an expired key is refused as a wrong one, 400, before any
    inference; the API key renews it."""
    server = short_keys(EXPIRED_MINUTES)
    stale = server.keyring.current("inference")
    time.sleep(4)
    url = f"{server.inference_url}/predictions/eca_resnet50"
    refused = httpx.post(url, headers=bearer(stale), files={"image_0000": b"x"})
    assert refused.status_code == 400 and key_refused(refused.status_code, refused.content)
    server.recover("inference", stale)
    assert server.keyring.current("inference") != stale
    renewed = httpx.post(url, headers=server.headers("inference"), files={"image_0000": b"x"})
    assert renewed.status_code == 200


def test_gateway_classifies_and_stays_ready_across_expiries_of_both_keys(short_keys):
    """12-second keys. First the gateway alone for 2.3 lifetimes of classify and readiness: every
    answer 200, and the gateway itself renewed both keys at least twice. Then a direct client (the
    benchmarks') alone across the next renewal: every answer 200 too."""
    server = short_keys(SHORT_MINUTES)
    lifetime_s = SHORT_MINUTES * 60
    images, labels = labelled_images(4, seed=5)
    statuses: list[int] = []

    def tokens() -> dict[str, str]:
        keys = server.keyring.keys()
        return {kind: keys[kind].token for kind in ("inference", "management")}

    with GatewayThread(gateway_settings(server)) as gateway:
        deadline = time.monotonic() + 2.3 * lifetime_s
        while time.monotonic() < deadline:
            statuses.append(httpx.get(f"{gateway.url}/readyz", timeout=30).status_code)
            for model in STACK_MODELS:
                response = httpx.post(
                    f"{gateway.url}/v1/models/{model}/classify",
                    files=[("file", ("x", images[1], "image/jpeg"))],
                    timeout=30,
                )
                statuses.append(response.status_code)
                assert response.status_code != 200 or top1(response) == labels[1]
            time.sleep(1)
        renewals = {
            (kind, outcome): metric(
                gateway.url, "gateway_backend_key_renewals_total", kind=kind, outcome=outcome
            )
            for kind in ("inference", "management")
            for outcome in ("renewed", "failed")
        }
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert renewals[("inference", "renewed")] >= 2, renewals
    assert renewals[("management", "renewed")] >= 2, renewals
    assert renewals[("inference", "failed")] == renewals[("management", "failed")] == 0

    async def direct_calls() -> tuple[list[int], set[str]]:
        answers, seen = [], set()
        async with httpx.AsyncClient(timeout=60) as client:
            deadline = time.monotonic() + lifetime_s
            while time.monotonic() < deadline:
                response = await post_direct(
                    client, server, "/predictions/eca_resnet50", content=images[0]
                )
                answers.append(response.status_code)
                seen.add(tokens()["inference"])
                await asyncio.sleep(1)
        return answers, seen

    direct, seen = asyncio.run(direct_calls())
    assert set(direct) == {200}, direct
    assert len(seen) >= 2, seen  # the direct client renewed the key it used


class SkewedKeyRing(KeyRing):
    """A gateway whose clock says its keys are fresh: it only learns of expiry from
    TorchServe's refusal."""

    def due(self, kind: str, now: float | None = None) -> bool:
        return False


def backend_for(server, keys: KeyRing, renewals: list[tuple[str, str]]) -> TorchServeBackend:
    return TorchServeBackend(
        list(STACK_MODELS),
        Discovery(server.inference_url, server.management_url),
        keys,
        timeout_s=30,
        breakers=lambda: CircuitBreaker(1, 30),
        on_key_renewal=lambda kind, outcome: renewals.append((kind, outcome)),
    )


def test_an_expired_key_refused_by_torchserve_is_renewed_and_the_batch_sent_again(short_keys):
    server = short_keys(EXPIRED_MINUTES)
    renewals: list[tuple[str, str]] = []
    backend = backend_for(server, SkewedKeyRing(server.key_file), renewals)
    with GatewayThread(gateway_settings(server), backend) as gateway:
        images, labels = labelled_images(2, seed=9)
        for _ in range(2):
            time.sleep(4)  # both keys expired
            assert httpx.get(f"{gateway.url}/readyz", timeout=30).status_code == 200
            response = httpx.post(
                f"{gateway.url}/v1/models/eca_resnet50/classify",
                files=[("file", ("x", images[0], "image/jpeg"))],
                timeout=30,
            )
            assert response.status_code == 200 and top1(response) == labels[0]
    assert renewals.count(("inference", "renewed")) >= 2
    assert renewals.count(("management", "renewed")) >= 2


def test_a_key_that_cannot_be_renewed_is_an_honest_503_and_no_verdict_on_the_worker(
    short_keys, tmp_path
):
    """An API key TorchServe does not know: every renewal fails. Clients get 503 (not 502),
    readiness says why, the failure is counted, and the breaker (one failure opens it here)
    stays closed."""
    server = short_keys(EXPIRED_MINUTES)
    forged = tmp_path / "forged_key_file.json"
    forged.write_text(server.key_file.read_text().replace(server.keyring.current("API"), "nope"))
    renewals: list[tuple[str, str]] = []
    backend = backend_for(server, SkewedKeyRing(forged), renewals)
    with GatewayThread(gateway_settings(server), backend) as gateway:
        time.sleep(4)
        images, _ = labelled_images(1, seed=3)
        for _ in range(3):
            response = httpx.post(
                f"{gateway.url}/v1/models/eca_resnet50/classify",
                files=[("file", ("x", images[0], "image/jpeg"))],
                timeout=30,
            )
            assert response.status_code == 503, response.text
            assert "renew" in response.json()["error"]["message"]
            assert "open" not in response.json()["error"]["message"]
        ready = httpx.get(f"{gateway.url}/v1/models/eca_resnet50/ready", timeout=30)
        assert ready.status_code == 503 and "renew" in ready.text
    # the readiness checks' management key failed to renew, so the endpoint is not ready and no
    # user image is sent there: the inference key is not even tried (nor ever renewed)
    assert ("management", "failed") in renewals
    assert ("inference", "renewed") not in renewals

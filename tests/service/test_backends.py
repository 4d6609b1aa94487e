"""The backends alone. The TorchServe client against scripted HTTP answers (httpx's
MockTransport: real TorchServe is tested in test_gateway_torchserve): malformed answers are
``BadBackendResponse``, 4xx never opens the circuit, 5xx and transport failures do, per model;
a connect timeout is "unavailable", not "timeout". The in-process backend honours its timeout."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from contract import batch
from contract.keys import KeyRing
from model_store.demo.synthetic import encode
from service.app import create_app
from service.backends.base import (
    BackendTimeout,
    BackendUnavailable,
    BadBackendResponse,
    check_results,
)
from service.backends.circuit import CircuitBreaker
from service.backends.endpoints import Discovery
from service.backends.inprocess import InProcessBackend
from service.backends.torchserve_client import TorchServeBackend
from service.inputs import Upload
from service.settings import GatewaySettings

from ..checks import INTERNALS

MODELS = ["se_resnet50", "eca_resnet50"]
GOOD = {"predictions": [{"index": 1, "label": "cat", "score": 0.75}]}


def backend_answering(
    answer: Callable[[httpx.Request], httpx.Response], readiness_timeout_s: float = 2.0
) -> TorchServeBackend:
    return TorchServeBackend(
        MODELS,
        Discovery("http://ts:8080", "http://ts:8081"),
        KeyRing(None),
        timeout_s=5,
        breakers=lambda: CircuitBreaker(2, cooldown_s=30),
        readiness_timeout_s=readiness_timeout_s,
        transport=httpx.MockTransport(answer),
    )


def breaker_of(backend: TorchServeBackend, model: str) -> CircuitBreaker:
    [endpoint] = backend.found
    return endpoint.breakers[model]


def results(*entries: object) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(200, json={"results": list(entries)})


def classify(backend: TorchServeBackend, model: str = "se_resnet50", images: int = 1):
    answers = asyncio.run(backend.classify(model, [Upload(b"img", 1)] * images, 5))
    return [answer.model_dump(exclude_none=True) for answer in answers]


FAILED = {"error": {"code": "undecodable_image", "message": "y"}}


def test_well_formed_answer_is_returned():
    assert classify(backend_answering(results(GOOD, FAILED)), images=2) == [GOOD, FAILED]


def test_an_error_code_the_contract_does_not_declare_is_a_bad_answer():
    """Its status would be a guess: the worker and the gateway disagree on the contract."""
    with pytest.raises(BadBackendResponse, match=r"0\.error\.code") as raised:
        classify(backend_answering(results({"error": {"code": "x", "message": "y"}})))
    assert raised.value.status == 502


def test_preprocessed_inputs_and_probabilities_travel_as_the_worker_expects():
    """One batch body (``contract.batch``): each input's kind and bytes in order, top_k and
    the probabilities asked for."""
    sent: list[httpx.Request] = []
    answer = {**GOOD, "probabilities": [0.25, 0.75]}

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"results": [answer, answer]})

    inputs = [Upload(b"jpeg", 1), Upload(b"\x00" * 8, 1, kind="tensor")]
    backend = backend_answering(record)
    answers = asyncio.run(backend.classify(MODELS[0], inputs, 3, probabilities=True))
    assert [a.model_dump(exclude_none=True) for a in answers] == [answer] * 2
    assert sent[0].headers["content-type"] == batch.CONTENT_TYPE
    body = batch.decode(sent[0].read())
    assert (body.top_k, body.probabilities) == (3, True)
    assert [(kind, bytes(data)) for kind, data in body.inputs] == [
        ("image", b"jpeg"),
        ("tensor", b"\x00" * 8),
    ]


def test_probabilities_asked_for_and_missing_are_a_bad_answer():
    with pytest.raises(BadBackendResponse, match="left out the probabilities"):
        check_results([GOOD], 1, probabilities=True)
    with pytest.raises(BadBackendResponse, match="probabilities"):
        check_results([{**GOOD, "probabilities": [1.5]}], 1, probabilities=True)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (lambda _: httpx.Response(200, text="<html>oops</html>"), "not JSON"),
        (lambda _: httpx.Response(200, json={"result": []}), "NoneType results"),
        (results(GOOD, GOOD), "2 results for 1 inputs"),
        (results(), "0 results for 1 inputs"),
        (
            lambda _: httpx.Response(
                200,
                content=b'{"results": [{"predictions": [{"index": 1, "label": "c", "score": NaN}'
                b"]}]}",
            ),
            "score",
        ),
        (results({"predictions": [{"index": 1, "label": "cat", "score": 1.5}]}), "score"),
        (results({"predictions": [{"label": "cat", "score": 0.5}]}), "index"),
        (results({"surprise": True}), "malformed"),
    ],
    ids=["html", "no-results", "too-many", "too-few", "nan", "above-1", "no-index", "unknown"],
)
def test_malformed_answers_are_bad_backend_responses(answer, message):
    def nan_safe(request: httpx.Request) -> httpx.Response:
        response = answer(request)
        return httpx.Response(
            response.status_code, content=response.content.replace(b"NaN", b"NaN")
        )

    with pytest.raises(BadBackendResponse, match=message) as raised:
        classify(backend_answering(nan_safe))
    assert raised.value.reached and raised.value.status == 502


def test_4xx_never_opens_the_circuit_and_its_body_stays_in_the_log():
    backend = backend_answering(
        lambda _: httpx.Response(400, text="java.lang.Exception at 0x7f3a2b1c")
    )
    for _ in range(5):
        with pytest.raises(BadBackendResponse) as raised:
            classify(backend)
        assert "HTTP 400" in str(raised.value) and not INTERNALS.search(str(raised.value))
    assert breaker_of(backend, "se_resnet50").acquire() is None


def test_5xx_opens_the_circuit_of_that_model_only():
    calls: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("se_resnet50"):
            return httpx.Response(507, text="worker OOM: <traceback ...>")
        return httpx.Response(200, json={"results": [GOOD]})

    backend = backend_answering(answer)
    for _ in range(2):
        with pytest.raises(BackendUnavailable) as raised:
            classify(backend, "se_resnet50")
        assert raised.value.reached and "traceback" not in str(raised.value)
    with pytest.raises(BackendUnavailable, match="circuit open"):
        classify(backend, "se_resnet50")
    assert calls.count("/predictions/se_resnet50") == 2  # the open circuit did not call
    assert classify(backend, "eca_resnet50") == [GOOD]  # the other model is untouched


def test_an_input_whose_output_is_not_finite_fails_alone_and_is_no_verdict_on_the_worker():
    """The worker answers that one input's output was NaN: that caller's error, the batch's
    other answers stand, and however often it happens the circuit stays closed."""
    nan = {"error": {"code": "non_finite_output", "message": "not a number"}}
    backend = backend_answering(results(GOOD, nan))
    for _ in range(5):
        assert classify(backend, images=2) == [GOOD, nan]
    assert breaker_of(backend, "se_resnet50").acquire() is None


def test_malformed_answers_count_as_failures_and_success_only_after_parsing():
    answers = iter(
        [httpx.Response(200, text="garbage"), httpx.Response(200, json={"results": []})] * 2
    )
    backend = backend_answering(lambda _: next(answers))
    for _ in range(2):
        with pytest.raises(BadBackendResponse):
            classify(backend)
    with pytest.raises(BackendUnavailable, match="circuit open"):
        classify(backend)


def test_connect_timeout_is_unavailable_not_timeout():
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("timed out", request=request)

    with pytest.raises(BackendUnavailable) as raised:
        classify(backend_answering(answer))
    assert not raised.value.reached and raised.value.status == 503


def test_read_timeout_is_timeout():
    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    with pytest.raises(BackendTimeout) as raised:
        classify(backend_answering(answer))
    assert raised.value.reached and raised.value.status == 504


def test_malformed_worker_answer_is_a_json_502_at_the_gateway():
    describe, _ = describing()

    async def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.startswith("/models/"):  # readiness: eca has a ready worker
            return await describe(request)
        return httpx.Response(200, text="Internal <b>error</b>")

    backend = backend_answering(answer)
    settings = GatewaySettings(models=MODELS, max_batch_delay_ms=1)

    with TestClient(create_app(settings, backend)) as client:
        response = client.post(
            "/v1/models/eca_resnet50/classify",
            content=encode(Image.new("RGB", (32, 32)), "PNG"),
            headers={"Content-Type": "image/png"},
        )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_backend_response"
    assert "<b>" not in response.text


def describing(batch_size: int = 1, buckets: list[int] | None = None, metadata_as_text=False):
    """TorchServe's management API: workers on the plain description, the worker's own facts
    (``describe_handle``) with ``customized=true``; records how often each was asked."""
    asked: list[str] = []
    facts = {"runtime": "aot", "batch_buckets": buckets or [1, 2, 4, 8], "threads": 1}

    async def answer(request: httpx.Request) -> httpx.Response:
        customized = request.url.params.get("customized") == "true"
        asked.append(f"{request.url.path}{'?customized' if customized else ''}")
        if customized:
            metadata = json.dumps(facts) if metadata_as_text else facts
            return httpx.Response(
                200, json=[{"batchSize": batch_size, "customizedMetadata": metadata}]
            )
        await asyncio.sleep(0.3)
        workers = [{"status": "READY"}] if "eca" in request.url.path else []
        return httpx.Response(200, json=[{"workers": workers, "batchSize": batch_size}])

    return answer, asked


def test_readiness_asks_every_model_at_once_within_its_timeout():
    answer, _ = describing()
    in_flight, most = 0, 0

    async def counting(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        try:
            return await answer(request)
        finally:
            in_flight -= 1

    backend = backend_answering(counting)  # type: ignore[arg-type]
    states = asyncio.run(backend.readiness())
    assert most == 2  # both models asked at once, not one after the other
    assert states == {"se_resnet50": "no ready worker (HTTP 200)", "eca_resnet50": "ready"}


def test_probes_read_the_last_round_and_rounds_never_pile_up():
    """A hung worker made every round last its timeouts, and every caller that found the cache
    stale ran a round of its own after the one before: probes timed out on every replica at
    once. Now one round runs at a time, callers arriving meanwhile share it, and readiness
    answers from the last finished round at once."""
    describe, asked = describing()
    hung = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        if hung.is_set():
            await asyncio.sleep(60)
        return await describe(request)

    backend = backend_answering(answer, readiness_timeout_s=30)  # type: ignore[arg-type]

    async def scenario() -> tuple[list[dict[str, str]], int]:
        first = await backend.readiness()
        hung.set()
        await asyncio.sleep(1.1)  # past any cache of the previous round
        round_ = asyncio.create_task(backend.checks.check_all())  # the refresher's, now hung
        await asyncio.sleep(0.1)
        asked_before = len(asked)
        probes = await asyncio.wait_for(
            asyncio.gather(*(backend.readiness() for _ in range(20))), timeout=1.0
        )
        joined = [asyncio.create_task(backend.checks.check_all()) for _ in range(20)]
        await asyncio.sleep(0.2)
        new_requests = len(asked) - asked_before
        for task in [round_, *joined]:
            task.cancel()
        assert all(p == first for p in probes)
        return probes, new_requests

    _, new_requests = asyncio.run(scenario())
    assert new_requests == 0  # the 20 joined the hung round: no request of their own


@pytest.mark.parametrize("metadata_as_text", [False, True])
def test_a_ready_worker_is_described_once_and_its_runtime_exported(metadata_as_text):
    answer, asked = describing(metadata_as_text=metadata_as_text)
    backend = backend_answering(answer)  # type: ignore[arg-type]
    for _ in range(2):
        asyncio.run(backend.checks.check_all())  # two rounds (the refresher's)
    assert asked.count("/models/eca_resnet50?customized") == 1  # not on every probe
    assert "/models/se_resnet50?customized" not in asked  # no ready worker, nothing to ask
    assert {m: f.runtime for m, f in backend.worker_facts().items()} == {"eca_resnet50": "aot"}


@pytest.mark.parametrize(
    ("batch_size", "buckets", "reason"),
    [
        (8, [1, 2, 4, 8], "TorchServe batchSize is 8"),
        (1, [1, 2, 4], "max_batch_size 8 exceeds the worker's largest warmed batch bucket 4"),
    ],
)
def test_a_worker_whose_batching_disagrees_with_the_gateways_is_not_ready(
    batch_size, buckets, reason
):
    answer, _ = describing(batch_size, buckets)
    backend = backend_answering(answer)  # type: ignore[arg-type]
    backend.checks.max_batch_size = 8
    state = asyncio.run(backend.readiness())["eca_resnet50"]
    assert state.startswith("misconfigured") and reason in state


class SlowClassifier:
    def classify(
        self, images: list[bytes], top_k: int, probabilities: bool, stopwatch: object = None
    ) -> list[dict]:
        time.sleep(0.4)
        return [GOOD for _ in images]


def test_inprocess_backend_honours_its_timeout_and_keeps_the_model_locked():
    backend = InProcessBackend(["se_resnet50"], None, timeout_s=0.1, max_batch_size=8)  # type: ignore[arg-type]
    backend._classifiers["se_resnet50"] = SlowClassifier()  # type: ignore[assignment]

    async def scenario():
        with pytest.raises(BackendTimeout):
            await backend.classify("se_resnet50", [Upload(b"x", 1)], 5)
        assert backend._locks["se_resnet50"].locked()  # the late batch still holds the model
        backend.timeout_s = 5
        return await backend.classify("se_resnet50", [Upload(b"x", 1), Upload(b"y", 1)], 5)

    answers = asyncio.run(scenario())
    assert [a.model_dump(exclude_none=True, exclude={"timing"}) for a in answers] == [GOOD, GOOD]
    assert all(a.timing is not None and a.timing.total_ms >= 400 for a in answers)


def test_check_results_accepts_errors_and_predictions():
    entries = [GOOD, {"error": {"code": "undecodable_image", "message": "bad"}}]
    checked = check_results(json.loads(json.dumps(entries)), 2)
    assert [entry.model_dump(exclude_none=True) for entry in checked] == entries

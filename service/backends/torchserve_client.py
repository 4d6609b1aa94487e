"""The product path: batches go to TorchServe as one request each (``contract.batch``).

Every TorchServe found (``torchserve_readiness``: a list of URLs, or every address of a DNS
name, checked in rounds) gets batches, each batch the ready one with the least outstanding work;
a batch that reached none of them (connection refused) is sent to the next, one that may have
been computed is never sent twice. One pooled ``httpx.AsyncClient``; keys renewed by
``torchserve_keys``; a circuit breaker per model and endpoint so a dead worker means fast 503s
for its model and endpoint only. TorchServe's raw answers go to the log, never into a client's
error message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from contract import batch
from contract.keys import KeyRing
from contract.protocol import COMPILED_GRAPHS_FIELD, RESULTS_FIELD, TIMING_FIELD

from ..inputs import Upload
from ..schemas import EndpointStatus
from .base import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadBackendResponse,
    BatchResult,
    WorkerFacts,
    check_results,
    with_timing,
)
from .circuit import CircuitBreaker
from .endpoints import Discovery, Endpoint, EndpointSet, Outcome
from .torchserve_keys import KeyedRequests, KeyRefused
from .torchserve_readiness import ReadinessChecks

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
"""Past this, TorchServe counts as unreachable (503), never as slow (504)."""


class LocalPoolExhausted(BackendUnavailable):
    """Every pooled connection is busy: the gateway's own limit, no verdict on the worker."""


class Unreached(BackendUnavailable):
    """Nothing reached the TorchServe (connection refused or not made in time): the batch may
    go to another one, nothing was computed twice."""


def _answer(response: httpx.Response) -> dict[str, Any]:
    """The worker's answer as a mapping, whatever it holds (``check_results`` judges it)."""
    try:
        body = response.json()
    except ValueError:
        raise BadBackendResponse("the worker's answer is not JSON") from None
    return body if isinstance(body, dict) else {}


class TorchServeBackend:
    def __init__(
        self,
        models: list[str],
        discovery: Discovery,
        keys: KeyRing,
        timeout_s: float,
        breakers: Callable[[], CircuitBreaker],
        readiness_timeout_s: float = 2.0,
        max_batch_size: int = 1,
        max_connections: int = 64,
        on_key_renewal: Callable[[str, str], None] = lambda kind, outcome: None,
        refresh_s: float = 2.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``transport``: httpx's own by default; a test's ``MockTransport``."""
        self.models = models
        self.timeout_s = timeout_s
        self.cooldown_s = breakers().cooldown_s
        self.found = EndpointSet(models, breakers)
        if not discovery.dns:
            self.found.update(discovery.static)  # known before the first check
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
        )
        self.requests = KeyedRequests(keys, self._client, readiness_timeout_s, on_key_renewal)
        self.checks = ReadinessChecks(
            models,
            discovery,
            self.found,
            self.requests,
            readiness_timeout_s,
            max_batch_size,
            refresh_s,
        )

    async def start(self) -> None:
        await self.checks.start()

    async def close(self) -> None:
        await self.checks.close()
        await self._client.aclose()

    async def readiness(self) -> dict[str, str]:
        return await self.checks.readiness()

    async def classify(
        self, model: str, inputs: Sequence[Upload], top_k: int, probabilities: bool = False
    ) -> list[BatchResult]:
        """One multipart request per batch, to the ready endpoint with the least outstanding work
        whose circuit breaker lets it through; sent on to the next only when it reached
        none (``Unreached``)."""
        tried: list[Endpoint] = []
        unreached: Unreached | None = None
        while True:
            try:
                endpoint = self._acquire(model, len(inputs), tried)
            except BackendUnavailable:
                if unreached is not None:  # no other endpoint to try: what the last one did
                    raise unreached from None
                raise
            tried.append(endpoint)
            try:
                return await self._classify_on(endpoint, model, inputs, top_k, probabilities)
            except Unreached as exc:
                unreached = exc
                log.warning("%s unreachable; the %s batch tries another", endpoint.name, model)

    def _acquire(self, model: str, images: int, tried: list[Endpoint]) -> Endpoint:
        """The first candidate for ``images`` not tried yet whose breaker lets the batch
        through."""
        waits = []
        for endpoint in self.found.candidates(model, images):
            if endpoint in tried:
                continue
            if (wait := endpoint.breakers[model].acquire()) is None:
                return endpoint
            waits.append(wait)
        if not waits:  # none ready (or none checked yet): why, as the checks found it
            raise BackendUnavailable(
                f"no ready TorchServe for {model}: {self.checks.state(model)}", self.cooldown_s
            )
        wait = min(waits)
        raise BackendUnavailable(
            f"the {model} worker is failing; circuit open for {wait:.1f} s more", wait
        )

    async def _classify_on(
        self,
        endpoint: Endpoint,
        model: str,
        inputs: Sequence[Upload],
        top_k: int,
        probabilities: bool,
    ) -> list[BatchResult]:
        """One batch on one endpoint, judged by its breaker for this model, and counted."""
        breaker = endpoint.breakers[model]
        endpoint.sent(model, len(inputs))
        started = time.perf_counter()
        outcome: Outcome = None
        try:
            results = await self._judged(
                breaker,
                endpoint,
                model,
                (len(inputs), probabilities),
                self._post(endpoint, model, inputs, top_k, probabilities),
            )
        except BackendError as exc:
            outcome = "failed" if exc.reached else None
            raise
        else:
            outcome = "answered"
            return results
        finally:
            endpoint.ended(model, len(inputs), time.perf_counter() - started, outcome)

    async def _judged(
        self,
        breaker: CircuitBreaker,
        endpoint: Endpoint,
        model: str,
        expected: tuple[int, bool],
        sent: Awaitable[httpx.Response],
    ) -> list[BatchResult]:
        """The results of the request ``sent``, if they are what was ``expected`` (how many,
        with probabilities or not); each failure of the worker's is a verdict for ``breaker``."""
        count, probabilities = expected
        try:
            response = await sent
        except (LocalPoolExhausted, KeyRefused):  # the gateway's own trouble: no verdict
            breaker.release()
            raise
        except BackendError:
            breaker.record_failure()
            raise
        except BaseException:  # cancelled: no verdict on the backend
            breaker.release()
            raise
        status = response.status_code
        if status != 200:
            log.warning(
                "TorchServe %s answered %d for %s: %.300s",
                endpoint.name,
                status,
                model,
                response.text,
            )
            if status >= 500:
                breaker.record_failure()
                raise BackendUnavailable(
                    f"the {model} worker failed (TorchServe HTTP {status})", 1.0, reached=True
                )
            breaker.release()  # a refusal of this request, not a sign of ill health
            raise BadBackendResponse(f"TorchServe refused the batch with HTTP {status}")
        try:
            answer = _answer(response)
            results = check_results(answer.get(RESULTS_FIELD), count, probabilities)
            results = with_timing(results, answer.get(TIMING_FIELD))
        except BadBackendResponse:
            breaker.record_failure()
            log.warning("malformed TorchServe answer for %s: %.300s", model, response.text)
            raise
        breaker.record_success()
        compiled = answer.get(COMPILED_GRAPHS_FIELD)
        if model in endpoint.facts and isinstance(compiled, int):
            endpoint.facts[model] = endpoint.facts[model].model_copy(
                update={"compiled_graphs": compiled}
            )
        return results

    async def _post(
        self,
        endpoint: Endpoint,
        model: str,
        inputs: Sequence[Upload],
        top_k: int,
        probabilities: bool,
    ) -> httpx.Response:
        body = batch.encode([(item.kind, item.data) for item in inputs], top_k, probabilities)
        url = f"{endpoint.address.inference_url}/predictions/{model}"
        return await self.requests.send(
            "inference",
            endpoint,
            lambda headers: self._send(url, body, headers | {"Content-Type": batch.CONTENT_TYPE}),
        )

    async def _send(
        self, url: str, body: bytes, headers: dict[str, str], refused_retries: int = 1
    ) -> httpx.Response:
        """One POST, its failures as backend errors; a refused connection (nothing reached
        TorchServe) is tried ``refused_retries`` more times."""
        try:
            return await self._client.post(url, content=body, headers=headers)
        except httpx.ConnectError:
            if refused_retries:
                return await self._send(url, body, headers, refused_retries - 1)
            raise Unreached("cannot reach TorchServe (ConnectError)", self.cooldown_s) from None
        except httpx.ConnectTimeout:
            raise Unreached("cannot reach TorchServe (ConnectTimeout)", self.cooldown_s) from None
        except httpx.PoolTimeout:
            raise LocalPoolExhausted("no free connection to TorchServe", 1.0) from None
        except httpx.TimeoutException:
            raise BackendTimeout(f"TorchServe did not answer within {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:  # connection dropped mid-request (worker died)
            raise BackendUnavailable(
                f"TorchServe connection failed ({type(exc).__name__})", 1.0, reached=True
            ) from None

    def worker_facts(self) -> dict[str, WorkerFacts]:
        """Per model: what its first ready endpoint reported, with the graphs compiled summed
        over every endpoint."""
        facts = {}
        for model in self.models:
            reported = [e.facts[model] for e in self.found if model in e.facts]
            if reported:
                counted = [f.compiled_graphs for f in reported if f.compiled_graphs is not None]
                total = sum(counted) if counted else None
                facts[model] = reported[0].model_copy(update={"compiled_graphs": total})
        return facts

    def endpoints(self) -> dict[str, list[EndpointStatus]]:
        return {model: [e.status(model) for e in self.found] for model in self.models}

    def ready_workers(self, model: str) -> int:
        return self.found.ready_workers(model)

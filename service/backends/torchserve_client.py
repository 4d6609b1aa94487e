"""The product path: batches go to TorchServe as one request each (``contract.batch``).

Every TorchServe found (``endpoints.py``: a list of URLs, or every address of a DNS name) gets
batches, each batch the ready one with the least outstanding work; a batch that reached none of them
(connection refused) is sent to the next, one that may have been computed is never sent twice.
One pooled ``httpx.AsyncClient``; token authorization (keys from TorchServe's key file, each
renewed with its API key before it expires and again when TorchServe refuses it: see
``contract.keys``); a circuit breaker per model so a dead worker means fast 503s for its
model and endpoint only. TorchServe's raw answers go to the log, never into a client's error
message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx

from contract import batch
from contract.keys import RENEWABLE_KINDS, KeyRing, bearer, key_refused
from contract.protocol import (
    COMPILED_GRAPHS_FIELD,
    RESULTS_FIELD,
    TIMING_FIELD,
    model_ready,
    ready_workers,
)

from ..schemas import READY, EndpointStatus
from ..uploads import Upload
from .base import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadBackendResponse,
    BatchResult,
    WorkerFacts,
    check_results,
    serving_mismatch,
    with_timing,
)
from .circuit import CircuitBreaker
from .endpoints import Discovery, Endpoint, EndpointSet, Outcome

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
"""Past this, TorchServe counts as unreachable (503), never as slow (504)."""


class LocalPoolExhausted(BackendUnavailable):
    """Every pooled connection is busy: the gateway's own limit, no verdict on the worker."""


class Unreached(BackendUnavailable):
    """Nothing reached the TorchServe (connection refused or not made in time): the batch may
    go to another one, nothing was computed twice."""


class KeyRefused(BackendUnavailable):
    """TorchServe refuses the gateway's key and renewing it failed: the gateway's own trouble,
    an honest 503 and no verdict on the worker."""


KEY_RETRY_AFTER_S = 5.0
RENEWED, RENEWAL_FAILED = "renewed", "failed"
"""The outcomes of a key renewal (``gateway_backend_key_renewals_total``'s label)."""

Send = Callable[[dict[str, str]], Awaitable[httpx.Response]]
"""One request to TorchServe, made with the authorization headers it is given."""


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
    ) -> None:
        self.models = models
        self.discovery = discovery
        self.keys = keys
        self.timeout_s = timeout_s
        self.cooldown_s = breakers().cooldown_s
        self.found = EndpointSet(models, breakers)
        if not discovery.dns:
            self.found.update(discovery.static)  # known before the first check
        self.readiness_timeout_s = readiness_timeout_s
        self.max_batch_size = max_batch_size
        self.on_key_renewal = on_key_renewal
        self.refresh_s = refresh_s
        self._renewing = {kind: asyncio.Lock() for kind in RENEWABLE_KINDS}
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
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
        await self._client.aclose()

    async def _keep_current(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self._check_all()
            except Exception:  # the next round tries again; serving goes on meanwhile
                log.exception("checking the TorchServe endpoints failed")

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
                f"no ready TorchServe for {model}: {self._state(model)}", self.cooldown_s
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
        return await self._with_key(
            "inference",
            endpoint,
            lambda headers: self._send(url, body, headers | {"Content-Type": batch.CONTENT_TYPE}),
        )

    async def _with_key(self, kind: str, endpoint: Endpoint, send: Send) -> httpx.Response:
        """``send`` with the current ``kind`` key, renewed first when it is about to expire.
        TorchServe refuses an expired key before computing anything, so a refused request is
        sent once more with a renewed key. (Keys are one TorchServe's: the settings allow a
        key file with one endpoint only.)"""
        if self.keys.due(kind):  # still valid a while: a failure is logged, counted, retried
            with contextlib.suppress(KeyRefused):
                await self._renew(kind, endpoint, self.keys.current(kind))
        sent = self.keys.current(kind)
        response = await send(bearer(sent))
        if not key_refused(response.status_code, response.content):
            return response
        log.warning("TorchServe refused the gateway's %s key; renewing it", kind)
        await self._renew(kind, endpoint, sent)
        response = await send(self.keys.headers(kind))
        if key_refused(response.status_code, response.content):
            raise KeyRefused(
                f"TorchServe refuses the gateway's renewed {kind} key", KEY_RETRY_AFTER_S
            )
        return response

    async def _renew(self, kind: str, endpoint: Endpoint, stale: str | None) -> None:
        """A new ``kind`` key from TorchServe, unless ``stale`` was replaced meanwhile (another
        request renewed it, or TorchServe restarted with new keys). One renewal at a time."""
        async with self._renewing[kind]:
            if self.keys.current(kind) != stale:
                return
            try:
                renewal = self.keys.renewal(kind)
                response = await self._client.post(
                    f"{endpoint.address.management_url}{renewal.pop('path')}",
                    timeout=self.readiness_timeout_s,
                    **renewal,
                )
                problem = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except (LookupError, httpx.HTTPError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.keys.renewed()
            if problem is not None:
                self.on_key_renewal(kind, RENEWAL_FAILED)
                log.error("renewing TorchServe's %s key failed (%s)", kind, problem)
                raise KeyRefused(f"cannot renew TorchServe's {kind} key", KEY_RETRY_AFTER_S)
            self.on_key_renewal(kind, RENEWED)
            log.info("renewed TorchServe's %s key", kind)

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

    async def readiness(self) -> dict[str, str]:
        """Per model: ready when at least one endpoint has it ready (``protocol.model_ready``),
        else the first endpoint's reason, as of the last round of checks. Rounds run every
        ``refresh_s`` in the background (``start``): a probe reads their result and never
        waits on a worker (one hung worker made rounds outlast the probe's timeout, and every
        gateway replica went NotReady at once)."""
        if not self._checked:
            await self._check_all()
        return {model: self._state(model) for model in self.models}

    async def _check_all(self) -> None:
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

    def _state(self, model: str) -> str:
        endpoints = list(self.found)
        if not endpoints:
            return f"no TorchServe found at {self.discovery.host}"
        if any(endpoint.ready(model) for endpoint in endpoints):
            return READY
        return endpoints[0].states[model]

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

    async def _describe(
        self, endpoint: Endpoint, model: str, customized: bool
    ) -> tuple[int, dict[str, Any]]:
        """TorchServe's description of ``model``; ``customized`` asks its worker too (the
        handler's ``describe_handle``: a round trip to a worker that may be busy, so once)."""
        response = await self._with_key(
            "management",
            endpoint,
            lambda headers: self._client.get(
                f"{endpoint.address.management_url}/models/{model}",
                params={"customized": "true"} if customized else None,
                headers=headers,
                timeout=self.readiness_timeout_s,
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

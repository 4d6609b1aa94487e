"""The product path: batches go to TorchServe as one multipart request each.

One pooled ``httpx.AsyncClient``; token authorization (keys from TorchServe's key file, each
renewed with its API key before it expires and again when TorchServe refuses it: see
``model_store.worker.keys``); a circuit breaker per model so a dead worker means fast 503s for its
model only. TorchServe's raw answers go to the log, never into a client's error message.
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

from model_store.worker.keys import RENEWABLE_KINDS, KeyRing, bearer, key_refused
from model_store.worker.protocol import (
    COMPILED_GRAPHS_FIELD,
    PROBABILITIES_FIELD,
    RESULTS_FIELD,
    TOP_K_FIELD,
    input_field,
    model_ready,
)

from ..schemas import READY
from ..uploads import Upload
from .base import (
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    BadBackendResponse,
    WorkerFacts,
    check_results,
    serving_mismatch,
)
from .circuit import CircuitBreaker

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 2.0
"""Past this, TorchServe counts as unreachable (503), never as slow (504)."""


class LocalPoolExhausted(BackendUnavailable):
    """Every pooled connection is busy: the gateway's own limit, no verdict on the worker."""


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
        inference_url: str,
        management_url: str,
        keys: KeyRing,
        timeout_s: float,
        breakers: Callable[[], CircuitBreaker],
        readiness_timeout_s: float = 2.0,
        max_batch_size: int = 1,
        max_connections: int = 64,
        on_key_renewal: Callable[[str, str], None] = lambda kind, outcome: None,
    ) -> None:
        self.models = models
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.keys = keys
        self.timeout_s = timeout_s
        self.breakers = {model: breakers() for model in models}
        self.readiness_timeout_s = readiness_timeout_s
        self.max_batch_size = max_batch_size
        self.on_key_renewal = on_key_renewal
        self._renewing = {kind: asyncio.Lock() for kind in RENEWABLE_KINDS}
        self._facts: dict[str, WorkerFacts] = {}  # per model, while its worker is ready
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._readiness: tuple[float, dict[str, str]] = (0.0, {})

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.aclose()

    async def classify(
        self, model: str, inputs: Sequence[Upload], top_k: int, probabilities: bool = False
    ) -> list[dict[str, Any]]:
        """One multipart request per batch, judged by this model's circuit breaker."""
        breaker = self.breakers[model]
        if (wait := breaker.acquire()) is not None:
            raise BackendUnavailable(
                f"the {model} worker is failing; circuit open for {wait:.1f} s more", wait
            )
        try:
            response = await self._post(model, inputs, top_k, probabilities)
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
            log.warning("TorchServe answered %d for %s: %.300s", status, model, response.text)
            if status >= 500:
                breaker.record_failure()
                raise BackendUnavailable(
                    f"the {model} worker failed (TorchServe HTTP {status})", 1.0, reached=True
                )
            breaker.release()  # a refusal of this request, not a sign of ill health
            raise BadBackendResponse(f"TorchServe refused the batch with HTTP {status}")
        try:
            answer = _answer(response)
            results = check_results(answer.get(RESULTS_FIELD), len(inputs), probabilities)
        except BadBackendResponse:
            breaker.record_failure()
            log.warning("malformed TorchServe answer for %s: %.300s", model, response.text)
            raise
        breaker.record_success()
        compiled = answer.get(COMPILED_GRAPHS_FIELD)
        if model in self._facts and isinstance(compiled, int):
            self._facts[model] = self._facts[model].model_copy(update={"compiled_graphs": compiled})
        return results

    async def _post(
        self, model: str, inputs: Sequence[Upload], top_k: int, probabilities: bool
    ) -> httpx.Response:
        files = [
            (input_field(item.kind, i), (f"{i}", item.data, "application/octet-stream"))
            for i, item in enumerate(inputs)
        ]
        fields = {TOP_K_FIELD: str(top_k)} | ({PROBABILITIES_FIELD: "1"} if probabilities else {})
        url = f"{self.inference_url}/predictions/{model}"
        return await self._with_key(
            "inference", lambda headers: self._send(model, url, files, fields, headers)
        )

    async def _with_key(self, kind: str, send: Send) -> httpx.Response:
        """``send`` with the current ``kind`` key, renewed first when it is about to expire.
        TorchServe refuses an expired key before computing anything, so a refused request is
        sent once more with a renewed key."""
        if self.keys.due(kind):  # still valid a while: a failure is logged, counted, retried
            with contextlib.suppress(KeyRefused):
                await self._renew(kind, self.keys.current(kind))
        sent = self.keys.current(kind)
        response = await send(bearer(sent))
        if not key_refused(response.status_code, response.content):
            return response
        log.warning("TorchServe refused the gateway's %s key; renewing it", kind)
        await self._renew(kind, sent)
        response = await send(self.keys.headers(kind))
        if key_refused(response.status_code, response.content):
            raise KeyRefused(
                f"TorchServe refuses the gateway's renewed {kind} key", KEY_RETRY_AFTER_S
            )
        return response

    async def _renew(self, kind: str, stale: str | None) -> None:
        """A new ``kind`` key from TorchServe, unless ``stale`` was replaced meanwhile (another
        request renewed it, or TorchServe restarted with new keys). One renewal at a time."""
        async with self._renewing[kind]:
            if self.keys.current(kind) != stale:
                return
            try:
                renewal = self.keys.renewal(kind)
                response = await self._client.post(
                    f"{self.management_url}{renewal.pop('path')}",
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
        self,
        model: str,
        url: str,
        files: list[tuple[str, tuple[str, bytes, str]]],
        fields: dict[str, str],
        headers: dict[str, str],
        refused_retries: int = 1,
    ) -> httpx.Response:
        """One POST, its failures as backend errors; a refused connection (nothing reached
        TorchServe) is tried ``refused_retries`` more times."""
        try:
            return await self._client.post(url, files=files, data=fields, headers=headers)
        except httpx.ConnectError:
            if refused_retries:
                return await self._send(model, url, files, fields, headers, refused_retries - 1)
            raise BackendUnavailable(
                "cannot reach TorchServe (ConnectError)", self.breakers[model].cooldown_s
            ) from None
        except httpx.ConnectTimeout:
            raise BackendUnavailable(
                "cannot reach TorchServe (ConnectTimeout)", self.breakers[model].cooldown_s
            ) from None
        except httpx.PoolTimeout:
            raise LocalPoolExhausted("no free connection to TorchServe", 1.0) from None
        except httpx.TimeoutException:
            raise BackendTimeout(f"TorchServe did not answer within {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:  # connection dropped mid-request (worker died)
            raise BackendUnavailable(
                f"TorchServe connection failed ({type(exc).__name__})", 1.0, reached=True
            ) from None

    async def readiness(self) -> dict[str, str]:
        """Per model: ready as ``protocol.model_ready`` says. All models are asked at
        once, each within ``readiness_timeout_s``; cached for one second."""
        checked_at, cached = self._readiness
        if time.monotonic() - checked_at < 1.0 and cached:
            return cached
        states = await asyncio.gather(*(self._model_state(model) for model in self.models))
        status = dict(zip(self.models, states, strict=True))
        self._readiness = (time.monotonic(), status)
        return status

    def worker_facts(self) -> dict[str, WorkerFacts]:
        return dict(self._facts)

    async def _describe(self, model: str, customized: bool) -> tuple[int, dict[str, Any]]:
        """TorchServe's description of ``model``; ``customized`` asks its worker too (the
        handler's ``describe_handle``: a round trip to a worker that may be busy, so once)."""
        response = await self._with_key(
            "management",
            lambda headers: self._client.get(
                f"{self.management_url}/models/{model}",
                params={"customized": "true"} if customized else None,
                headers=headers,
                timeout=self.readiness_timeout_s,
            ),
        )
        return response.status_code, response.json()[0] if response.status_code == 200 else {}

    async def _model_state(self, model: str) -> str:
        """Ready: a READY worker whose batching agrees with the gateway's (checked once per
        worker start against what the worker itself reports)."""
        try:
            status, description = await self._describe(model, customized=False)
            if not model_ready(description):
                self._facts.pop(model, None)
                return f"no ready worker (HTTP {status})"
            if model not in self._facts:
                _, described = await self._describe(model, customized=True)
                reported = described["customizedMetadata"]  # JSON text in some versions
                self._facts[model] = WorkerFacts.model_validate(
                    (json.loads(reported) if isinstance(reported, str) else reported)
                    | {"batch_size": described["batchSize"]}
                )
        except KeyRefused as exc:
            return str(exc)
        except (httpx.HTTPError, ValueError, TypeError, LookupError, AttributeError) as exc:
            return f"TorchServe unreachable: {type(exc).__name__}"
        if mismatch := serving_mismatch(self._facts[model], self.max_batch_size):
            log.error("%s cannot be served as configured: %s", model, mismatch)
            return f"misconfigured: {mismatch}"
        return READY

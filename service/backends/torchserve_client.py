"""The product path: batches go to TorchServe as one multipart request each.

One pooled ``httpx.AsyncClient``; token authorization (keys from TorchServe's key file, renewed
with its API key on a 401); a circuit breaker per model so a dead worker means fast 503s for its
model only. TorchServe's raw answers go to the log, never into a client's error message.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from model_store.worker.protocol import (
    COMPILED_GRAPHS_FIELD,
    PROBABILITIES_FIELD,
    RESULTS_FIELD,
    TOP_K_FIELD,
    bearer,
    input_field,
    model_ready,
    read_keys,
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


class TorchServeKeys:
    """Tokens from TorchServe's ``key_file.json`` (re-read when it changes), or one fixed token."""

    def __init__(self, key_file: Path | None, token: str | None) -> None:
        self.key_file = key_file
        self.token = token
        self._mtime = -1.0
        self._keys: dict[str, str] = {}

    def get(self, kind: str) -> str | None:
        if self.key_file is None:
            return self.token
        try:
            mtime = self.key_file.stat().st_mtime
            if mtime != self._mtime:
                self._keys = read_keys(self.key_file)
                self._mtime = mtime
        except (OSError, ValueError):
            return self.token
        return self._keys.get(kind, self.token)

    def headers(self, kind: str) -> dict[str, str]:
        return bearer(self.get(kind))


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
        keys: TorchServeKeys,
        timeout_s: float,
        breakers: Callable[[], CircuitBreaker],
        readiness_timeout_s: float = 2.0,
        max_batch_size: int = 1,
        max_connections: int = 64,
    ) -> None:
        self.models = models
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.keys = keys
        self.timeout_s = timeout_s
        self.breakers = {model: breakers() for model in models}
        self.readiness_timeout_s = readiness_timeout_s
        self.max_batch_size = max_batch_size
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
        except LocalPoolExhausted:  # the gateway's own limit: no verdict on the backend
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
        """Retries only where nothing can have been computed twice: a refused connection, and
        a 401 after renewing the inference key."""
        files = [
            (input_field(item.kind, i), (f"{i}", item.data, "application/octet-stream"))
            for i, item in enumerate(inputs)
        ]
        fields = {TOP_K_FIELD: str(top_k)} | ({PROBABILITIES_FIELD: "1"} if probabilities else {})
        url = f"{self.inference_url}/predictions/{model}"
        response = await self._send(model, url, files, fields)
        if response.status_code == 401:  # the inference key expired: renew it, try once more
            await self._renew_inference_key()
            response = await self._send(model, url, files, fields)
        return response

    async def _send(
        self,
        model: str,
        url: str,
        files: list[tuple[str, tuple[str, bytes, str]]],
        fields: dict[str, str],
        refused_retries: int = 1,
    ) -> httpx.Response:
        """One POST, its failures as backend errors; a refused connection (nothing reached
        TorchServe) is tried ``refused_retries`` more times."""
        try:
            return await self._client.post(
                url, files=files, data=fields, headers=self.keys.headers("inference")
            )
        except httpx.ConnectError:
            if refused_retries:
                return await self._send(model, url, files, fields, refused_retries - 1)
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

    async def _renew_inference_key(self) -> None:
        """Inference keys expire (token_expiration_min); the API key asks for a new one."""
        try:
            await self._client.post(
                f"{self.management_url}/token",
                params={"type": "inference"},
                headers=self.keys.headers("API"),
            )
        except httpx.HTTPError as exc:
            log.warning("could not renew the TorchServe inference key: %s", exc)

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
        response = await self._client.get(
            f"{self.management_url}/models/{model}",
            params={"customized": "true"} if customized else None,
            headers=self.keys.headers("management"),
            timeout=self.readiness_timeout_s,
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
        except (httpx.HTTPError, ValueError, TypeError, LookupError, AttributeError) as exc:
            return f"TorchServe unreachable: {type(exc).__name__}"
        if mismatch := serving_mismatch(self._facts[model], self.max_batch_size):
            log.error("%s cannot be served as configured: %s", model, mismatch)
            return f"misconfigured: {mismatch}"
        return READY

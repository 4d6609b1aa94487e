"""The product path: batches go to TorchServe as one multipart request each.

One pooled ``httpx.AsyncClient``; token authorization (keys from TorchServe's key file, renewed
with its API key on a 401); a circuit breaker so a dead TorchServe means fast 503s. Retries only
where nothing can have been computed twice: a refused connection, and a 401 after renewing the key.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx

from .base import BackendTimeout, BackendUnavailable
from .circuit import CircuitBreaker

log = logging.getLogger(__name__)


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
                self._keys = {k: v["key"] for k, v in json.loads(self.key_file.read_text()).items()}
                self._mtime = mtime
        except (OSError, ValueError, KeyError, TypeError):
            return self.token
        return self._keys.get(kind, self.token)

    def headers(self, kind: str) -> dict[str, str]:
        key = self.get(kind)
        return {"Authorization": f"Bearer {key}"} if key else {}


class TorchServeBackend:
    def __init__(
        self,
        models: list[str],
        inference_url: str,
        management_url: str,
        keys: TorchServeKeys,
        timeout_s: float,
        breaker: CircuitBreaker,
        max_connections: int = 64,
    ) -> None:
        self.models = models
        self.inference_url = inference_url.rstrip("/")
        self.management_url = management_url.rstrip("/")
        self.keys = keys
        self.timeout_s = timeout_s
        self.breaker = breaker
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=2.0),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )
        self._readiness: tuple[float, dict[str, str]] = (0.0, {})

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._client.aclose()

    async def classify(self, model: str, images: list[bytes], top_k: int) -> list[dict[str, Any]]:
        if (wait := self.breaker.retry_after()) is not None:
            raise BackendUnavailable(
                f"TorchServe is failing; circuit open for {wait:.1f} s more", wait
            )
        files = [
            (f"image_{i:04d}", (f"{i}", data, "application/octet-stream"))
            for i, data in enumerate(images)
        ]
        url = f"{self.inference_url}/predictions/{model}"
        response = None
        for attempt in range(2):
            try:
                response = await self._client.post(
                    url,
                    files=files,
                    data={"top_k": str(top_k)},
                    headers=self.keys.headers("inference"),
                )
            except httpx.ConnectError as exc:  # nothing reached TorchServe: safe to retry once
                if attempt == 0:
                    continue
                self.breaker.record_failure()
                raise BackendUnavailable(
                    f"cannot connect to TorchServe: {exc}", self.breaker.cooldown_s
                ) from None
            except httpx.TimeoutException:
                self.breaker.record_failure()
                raise BackendTimeout(
                    f"TorchServe did not answer within {self.timeout_s:.0f} s"
                ) from None
            except (
                httpx.TransportError
            ) as exc:  # connection dropped mid-request (worker or server died)
                self.breaker.record_failure()
                raise BackendUnavailable(f"TorchServe connection failed: {exc!r}", 1.0) from None
            if response.status_code == 401 and attempt == 0:
                await self._renew_inference_key()
                continue
            break
        assert response is not None
        if response.status_code != 200:
            self.breaker.record_failure()
            raise BackendUnavailable(
                f"TorchServe answered {response.status_code}: {response.text[:200]}", 1.0
            )
        self.breaker.record_success()
        results = response.json()["results"]
        if len(results) != len(images):
            raise BackendUnavailable(
                f"TorchServe returned {len(results)} results for {len(images)} images"
            )
        return results

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
        """Per model: ready when TorchServe reports a READY worker (cached for one second)."""
        checked_at, cached = self._readiness
        if time.monotonic() - checked_at < 1.0 and cached:
            return cached
        status = {}
        for model in self.models:
            try:
                response = await self._client.get(
                    f"{self.management_url}/models/{model}",
                    headers=self.keys.headers("management"),
                    timeout=3.0,
                )
                workers = (
                    response.json()[0].get("workers", []) if response.status_code == 200 else []
                )
                ready = any(w.get("status") == "READY" for w in workers)
                status[model] = (
                    "ready" if ready else f"no ready worker (HTTP {response.status_code})"
                )
            except (httpx.HTTPError, ValueError, IndexError, KeyError) as exc:
                status[model] = f"TorchServe unreachable: {type(exc).__name__}"
        self._readiness = (time.monotonic(), status)
        return status

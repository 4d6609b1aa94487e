"""TorchServe's keys, on the gateway's side: every request to one TorchServe sent with the
current key of its kind, renewed with the API key before it expires and again when TorchServe
refuses it (``contract.keys``). TorchServe refuses an expired key before computing anything,
so a refused request is sent once more with a renewed key."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import httpx

from contract.keys import RENEWABLE_KINDS, KeyRing, bearer, key_refused

from .base import BackendUnavailable
from .endpoints import Endpoint

log = logging.getLogger(__name__)

KEY_RETRY_AFTER_S = 5.0
RENEWED, RENEWAL_FAILED = "renewed", "failed"
"""The outcomes of a key renewal (``gateway_backend_key_renewals_total``'s label)."""

Send = Callable[[dict[str, str]], Awaitable[httpx.Response]]
"""One request to TorchServe, made with the authorization headers it is given."""


class KeyRefused(BackendUnavailable):
    """TorchServe refuses the gateway's key and renewing it failed: the gateway's own trouble,
    an honest 503 and no verdict on the worker."""


class KeyedRequests:
    """Sends requests with the current key and renews keys, one renewal of a kind at a time.
    (Keys are one TorchServe's: the settings allow a key file with one endpoint only.)"""

    def __init__(
        self,
        keys: KeyRing,
        client: httpx.AsyncClient,
        renewal_timeout_s: float,
        on_renewal: Callable[[str, str], None],
    ) -> None:
        self.keys = keys
        self.client = client
        self.renewal_timeout_s = renewal_timeout_s
        self.on_renewal = on_renewal
        self._renewing = {kind: asyncio.Lock() for kind in RENEWABLE_KINDS}

    async def send(self, kind: str, endpoint: Endpoint, send: Send) -> httpx.Response:
        """``send`` with the current ``kind`` key, renewed first when it is about to expire,
        and once more after a refusal."""
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
        request renewed it, or TorchServe restarted with new keys)."""
        async with self._renewing[kind]:
            if self.keys.current(kind) != stale:
                return
            try:
                renewal = self.keys.renewal(kind)
                response = await self.client.post(
                    f"{endpoint.address.management_url}{renewal.pop('path')}",
                    timeout=self.renewal_timeout_s,
                    **renewal,
                )
                problem = None if response.status_code == 200 else f"HTTP {response.status_code}"
            except (LookupError, httpx.HTTPError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            self.keys.renewed()
            if problem is not None:
                self.on_renewal(kind, RENEWAL_FAILED)
                log.error("renewing TorchServe's %s key failed (%s)", kind, problem)
                raise KeyRefused(f"cannot renew TorchServe's {kind} key", KEY_RETRY_AFTER_S)
            self.on_renewal(kind, RENEWED)
            log.info("renewed TorchServe's %s key", kind)

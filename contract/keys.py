"""TorchServe's token authorization, as every client of ours meets it: the launcher, the gateway,
the benchmarks' direct clients. Plain Python (the gateway has no torch).

What TorchServe 0.12 does (read in its ``TokenAuthorization`` and tried against it): it writes
``key_file.json`` in its working directory with three keys. The ``inference`` and ``management``
keys expire ``token_expiration_min`` minutes (a float; default 60) after they were made; the
``API`` key never expires and only serves ``/token?type=inference|management`` on the management
address, which replaces that key, restarts its lifetime and rewrites the file. An expired key is
answered exactly as a wrong one: HTTP 400 with ``"type": "InvalidKeyException"`` (not 401),
refused before any inference runs, so a request refused so may be sent again. A restarted
TorchServe writes all three keys anew.

So a client renews a key shortly before it expires (``KeyRing.due``), and on that refusal
re-reads the file (someone else may have renewed), renews when the key it sent is still the
current one, and sends once more.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

KEY_FILE_NAME = "key_file.json"
RENEWABLE_KINDS = ("inference", "management")
"""The keys that expire; the ``API`` key renews them."""
RENEWAL_PATH = "/token"
"""On the management address: ``?type=<kind>`` with the API key."""
KEY_REFUSAL_TYPE = "InvalidKeyException"
"""The ``type`` of TorchServe's 400 answer to a missing, wrong or expired key."""
TOKEN_EXPIRATION_ENV = "TORCHSERVE_TOKEN_EXPIRATION_MIN"
"""Sets ``token_expiration_min`` of every TorchServe the project starts (minutes, may be a
fraction); unset, TorchServe's own default (60) holds."""
RENEW_BEFORE_S = 60.0
"""A key is renewed once fewer seconds than this are left of it (or half of its lifetime, for
keys shorter than two minutes), so a request never presents a key about to expire."""


def token_expiration_min() -> float | None:
    """``TORCHSERVE_TOKEN_EXPIRATION_MIN`` from the environment, checked; None when unset."""
    value = os.environ.get(TOKEN_EXPIRATION_ENV, "").strip()
    if not value:
        return None
    try:
        minutes = float(value)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ValueError(f"{TOKEN_EXPIRATION_ENV} must be a positive number of minutes: {value!r}")
    return minutes


def key_refused(status: int, body: bytes | str) -> bool:
    """Whether TorchServe refused a request for its key (missing, wrong or expired)."""
    if status != 400:
        return False
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return isinstance(answer, dict) and answer.get("type") == KEY_REFUSAL_TYPE


@dataclass(frozen=True)
class Key:
    token: str
    expires_at: float | None
    """Unix time; None for the API key, which does not expire."""


def _instant(text: str) -> float:
    """Java's ``Instant.toString()`` (nanoseconds, ``Z``) as Unix time."""
    whole, _, fraction = text.removesuffix("Z").partition(".")
    stamp = datetime.fromisoformat(f"{whole}+00:00").timestamp()
    return stamp + (float(f"0.{fraction}") if fraction else 0.0)


def read_key_file(key_file: Path) -> dict[str, Key]:
    """TorchServe's current keys by kind (``inference``, ``management``, ``API``); raises
    ``OSError`` or ``ValueError`` while it has not written them."""
    data = json.loads(key_file.read_text())
    try:
        return {
            kind: Key(
                entry["key"],
                _instant(entry["expiration time"]) if "expiration time" in entry else None,
            )
            for kind, entry in data.items()
        }
    except (AttributeError, KeyError, TypeError):
        raise ValueError(f"{key_file} is not a TorchServe key file") from None


def bearer(key: str | None) -> dict[str, str]:
    """The request headers that present ``key`` (none when token authorization is off)."""
    return {"Authorization": f"Bearer {key}"} if key else {}


class KeyRing:
    """The keys of one TorchServe: from its key file (re-read whenever the file changes), or one
    fixed token (which cannot be renewed); none when token authorization is off.

    TorchServe rewrites the file in place (truncate, then write), so a read can meet it empty or
    half written: the last keys read whole are kept until the next read succeeds. File times are
    coarse (a clock tick), so two rewrites within one tick can leave the same stamp: a file
    younger than ``FRESH_S`` is read again on every call."""

    FRESH_S = 1.0

    def __init__(self, key_file: Path | None, token: str | None = None) -> None:
        self.key_file = key_file
        self.token = token
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, Key] = {}
        self._lifetime_s: float | None = None

    def keys(self) -> dict[str, Key]:
        if self.key_file is None:
            return {}
        try:
            stat = self.key_file.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp or time.time() - stat.st_mtime < self.FRESH_S:
                keys = read_key_file(self.key_file)
                self._keys, self._stamp = keys, stamp
                expiries = [key.expires_at for key in keys.values() if key.expires_at is not None]
                if expiries:  # the newest key was made when the file was written
                    self._lifetime_s = max(expiries) - stat.st_mtime
        except OSError:  # no file (yet, or TorchServe stopped): no keys
            self._keys, self._stamp = {}, None
        except ValueError:  # met mid-write: keep the last whole read, read again next time
            self._stamp = None
        return self._keys

    def current(self, kind: str) -> str | None:
        key = self.keys().get(kind)
        return key.token if key else self.token

    def headers(self, kind: str) -> dict[str, str]:
        return bearer(self.current(kind))

    def can_renew(self) -> bool:
        return "API" in self.keys()

    def due(self, kind: str, now: float | None = None) -> bool:
        """Whether ``kind``'s key should be renewed now: close to (or past) its expiry. Every
        client of one TorchServe derives the same lifetime from the file, so they agree when."""
        key = self.keys().get(kind)
        if key is None or key.expires_at is None or not self.can_renew():
            return False
        now = time.time() if now is None else now
        lifetime = self._lifetime_s if self._lifetime_s is not None else 2 * RENEW_BEFORE_S
        return key.expires_at - now <= min(RENEW_BEFORE_S, lifetime / 2)

    def renewal(self, kind: str) -> dict[str, Any]:
        """The request that renews ``kind`` (path, query and headers; POST to the management
        address); raises ``LookupError`` without an API key."""
        if kind not in RENEWABLE_KINDS or not self.can_renew():
            raise LookupError(f"no way to renew the {kind} key")
        return {"path": RENEWAL_PATH, "params": {"type": kind}, "headers": self.headers("API")}

    def renewed(self) -> None:
        """TorchServe rewrote the file: read it again even if its stamp looks the same."""
        self._stamp = None

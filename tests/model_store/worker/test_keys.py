"""The key ring on key files written as TorchServe writes them (truncated, then written in place):
the lifetime every client agrees on, and a file met mid-write. The real TorchServe's answers are
tested in ``tests/service/test_key_expiry.py``."""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contract.keys import RENEW_BEFORE_S, KeyRing


def instant(at: float) -> str:
    """Java's ``Instant.toString()``."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_keys(
    path: Path, written_at: float, expiries: dict[str, float], api: str = "api0"
) -> None:
    data = {
        kind: {"key": f"{kind}-{at:.3f}", "expiration time": instant(at)}
        for kind, at in expiries.items()
    }
    path.write_text(json.dumps(data | {"API": {"key": "api"}}))
    os.utime(path, (written_at, written_at))


def test_the_lifetime_is_read_from_the_file_so_every_client_renews_at_the_same_time(tmp_path):
    """A 60 s key: due from 30 s before its expiry whenever the client first saw it."""
    path = tmp_path / "key_file.json"
    now = time.time()
    made = now - 20  # renewed 20 s ago; the management key is older
    write_keys(path, made, {"inference": made + 60, "management": made + 10})
    late_comer = KeyRing(path)
    assert not late_comer.due("inference", now=made + 29)
    assert late_comer.due("inference", now=made + 31)
    assert late_comer.due("management", now=now)  # 10 s left of it: past half its lifetime


def test_long_keys_are_renewed_a_minute_before_they_expire(tmp_path):
    path = tmp_path / "key_file.json"
    made = time.time() - 5
    write_keys(path, made, {"inference": made + 3600, "management": made + 3600})
    ring = KeyRing(path)
    assert not ring.due("inference", now=made + 3600 - RENEW_BEFORE_S - 1)
    assert ring.due("inference", now=made + 3600 - RENEW_BEFORE_S + 1)


def test_a_file_met_mid_write_keeps_the_last_keys_read_whole(tmp_path):
    path = tmp_path / "key_file.json"
    made = time.time() - 10
    write_keys(path, made, {"inference": made + 60, "management": made + 60})
    ring = KeyRing(path)
    first = ring.current("inference")
    assert first is not None
    path.write_text("")  # truncated, not written yet
    assert ring.current("inference") == first
    path.write_text('{"management": {"key": "m", "expir')  # half written
    assert ring.current("inference") == first and ring.can_renew()
    write_keys(path, time.time(), {"inference": made + 120, "management": made + 60})
    assert ring.current("inference") not in (None, first)


def test_two_rewrites_with_the_same_stamp_are_both_read(tmp_path):
    """File times move by clock ticks: a rewrite of the same size within one tick keeps the
    stamp, so a fresh file is read again on every call."""
    path = tmp_path / "key_file.json"
    made = time.time()
    write_keys(path, made, {"inference": made + 60, "management": made + 60})
    ring = KeyRing(path)
    assert ring.current("inference") == f"inference-{made + 60:.3f}"
    stamp = path.stat().st_mtime_ns
    path.write_text(path.read_text().replace("inference-", "INFERENCE-"))
    os.utime(path, ns=(stamp, stamp))
    assert ring.current("inference") == f"INFERENCE-{made + 60:.3f}"


def test_no_file_means_no_keys_and_a_fixed_token_is_used_as_is(tmp_path):
    assert KeyRing(tmp_path / "missing.json").current("inference") is None
    fixed = KeyRing(None, token="t")
    assert fixed.current("inference") == "t" and not fixed.due("inference")
    with pytest.raises(LookupError):
        fixed.renewal("inference")

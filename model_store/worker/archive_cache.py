"""Built archives kept by fingerprint, shared by every build that names the cache (``make
test`` does: its suite, benchmarks and load tests build the same tiny archives many times, in
every fresh clone). The fingerprint holds everything an archive's content depends on (spec,
code, weights, and the CPU its candidates are compiled for), so one cache serves both CPU
classes these machines alternate between: an archive built on one is never taken on the
other unless it was compiled to run on both.

Entries are whole archives, written under a temporary name and renamed into place (a build
in another process never sees half of one); the least recently used beyond ``KEEP`` go."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CACHE_ENV = "ARCHIVE_CACHE_DIR"
"""The cache's folder; unset (a user's ``make serve``): no cache, each build stands alone."""
KEEP = 48
"""Entries kept: a run of the suite builds about 30 distinct archives of a few MiB each."""


def user_cache_dir() -> Path:
    """This project's folder in the user's cache (``$XDG_CACHE_HOME``, else ``~/.cache``): what
    the suite keeps between clones (archives, the container tests' Docker data)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "attention-serving"


def cache_dir() -> Path | None:
    value = os.environ.get(CACHE_ENV)
    return Path(value) if value else None


def _entry(model: str, fingerprint: str) -> Path | None:
    root = cache_dir()
    return root / f"{model}-{fingerprint}.mar" if root is not None else None


@contextmanager
def claimed(model: str, fingerprint: str) -> Iterator[None]:
    """While inside, no other process builds these inputs: a second builder (a test worker in
    parallel, another clone's suite) waits, then finds the first one's archive in the cache.
    The kernel lets go of the lock if the builder dies."""
    entry = _entry(model, fingerprint)
    if entry is None:
        yield
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    with entry.with_suffix(".lock").open("a") as held:  # kept: a waiter may hold it open
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)


def _copy(source: Path, target: Path) -> None:
    """``source`` to ``target`` under a name of this process's, then renamed into place."""
    staged = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.copyfile(source, staged)
    staged.replace(target)


def fetch(model: str, fingerprint: str, archive: Path) -> bool:
    """``archive`` copied from the cache if an archive of ``fingerprint`` is there."""
    entry = _entry(model, fingerprint)
    if entry is None or not entry.is_file():
        return False
    _copy(entry, archive)
    os.utime(entry)  # recently used: kept longest
    return True


def store(model: str, fingerprint: str, archive: Path) -> None:
    """``archive`` into the cache, then the least recently used entries beyond ``KEEP`` out."""
    entry = _entry(model, fingerprint)
    if entry is None:
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    _copy(archive, entry)
    entries = sorted(entry.parent.glob("*.mar"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[KEEP:]:
        old.unlink(missing_ok=True)
        old.with_suffix(".lock").unlink(missing_ok=True)

"""Several archives at once, each in a process of its own.

The function a spawned process runs must live in an importable module: multiprocessing
does not re-import a package's ``__main__`` in its children (``python -m model_store``).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from .worker.archive import ArchiveSpec, build_archive
from .zoo.fidelity import FidelityFailed
from .zoo.runtimes import PrebuiltUnusable, RuntimeCheckFailed


def _say(prefix: str, message: str) -> None:
    print(f"{prefix} {message}", flush=True)


def build_one(spec: ArchiveSpec, out: Path, prefix: str) -> None:
    """One archive, its progress prefixed; a refusal ends the command with its reason."""
    try:
        build_archive(spec, out, progress=partial(_say, prefix))
    except (FidelityFailed, RuntimeCheckFailed, PrebuiltUnusable) as exc:  # none that lies
        raise SystemExit(f"error: {exc}") from None


def build_all(specs: list[ArchiveSpec], out: Path, jobs: int) -> None:
    """Every spec's archive; ``jobs`` above 1 builds several at once (compiling is mostly one
    core's work) unless a build measures candidates against each other (``auto``), which
    needs the machine to itself."""
    work = [(spec, out, f"[{i}/{len(specs)}]") for i, spec in enumerate(specs, 1)]
    jobs = min(jobs, len(specs))
    if jobs <= 1 or any(len(spec.candidates) > 1 for spec in specs):
        for job in work:
            build_one(*job)
        return
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in [pool.submit(build_one, *job) for job in work]:
            done.result()

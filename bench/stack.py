"""The processes a serving benchmark runs against: archives kept between runs, TorchServe and
gateways on free loopback ports."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from model_store.worker.archive import ArchiveSpec, build_archive
from model_store.worker.launcher import TorchServe, free_ports
from model_store.zoo.runtimes import DEFAULT_RUNTIME

from .torchserve_direct import progress

BENCH_DIR = Path(".run/bench")
"""Archives are kept here between runs (an AOT build of a full model takes minutes)."""


def build(
    args: argparse.Namespace, name: str, batch_size: int, runtime: str = DEFAULT_RUNTIME
) -> Path:
    """``args.model``'s archive (tiny trained with ``args.tiny``) in ``BENCH_DIR/name``, with
    TorchServe ``batch_size``: 1 behind a gateway, more for direct clients; served by
    ``runtime``."""
    from model_store.worker.tiny import save_tiny, train_tiny

    directory = BENCH_DIR / ("tiny-" if args.tiny else "") / name
    checkpoint = None
    if args.tiny:
        checkpoint = directory.parent / f"{args.model}-tiny.pt"
        if not checkpoint.exists():
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save_tiny(train_tiny(args.model), checkpoint)
    spec = ArchiveSpec(args.model, checkpoint=checkpoint, batch_size=batch_size, runtime=runtime)
    build_archive(spec, directory, progress=progress)
    return directory


def start_torchserve(model: str, archives: Path, run_dir: Path) -> tuple[TorchServe, float]:
    server = TorchServe.on_free_ports([model], archives, run_dir)
    started = time.perf_counter()
    server.start()
    server.wait_ready(progress=progress)
    return server, time.perf_counter() - started


def start_gateway(
    env: dict[str, str], log_path: Path, module: str = "service"
) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m module --port PORT`` on a free port, once its /readyz answers 200."""
    port = free_ports(1)[0]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port)],
            env=os.environ | env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited; log:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    process.terminate()
    raise RuntimeError(f"gateway not ready; log:\n{log_path.read_text()[-3000:]}")

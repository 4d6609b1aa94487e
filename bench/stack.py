"""The processes a benchmark, a load test or the test suite runs against: archives, TorchServe
and gateways on free loopback ports. ``start_stack`` is all of it at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from model_store.worker.archive import ArchiveSpec, build_archive
from model_store.worker.launcher import TorchServe, free_ports
from model_store.worker.protocol import GATEWAY_FED_BATCH_SIZE
from model_store.zoo.runtimes import DEFAULT_RUNTIME

from .common import progress

BENCH_DIR = Path(".run/bench")
"""Archives are kept here between runs (an AOT build of a full model takes minutes)."""
READY_TIMEOUT_S = 900.0
"""Compiling every bucket just in time on a 2-core CPU takes minutes; AOT archives seconds."""


def bench_archives(name: str, tiny: bool) -> Path:
    """Where a benchmark keeps its archives called ``name`` between runs."""
    return BENCH_DIR / ("tiny" if tiny else "full") / name


def build(
    model: str,
    directory: Path,
    *,
    tiny: bool = False,
    batch_size: int = GATEWAY_FED_BATCH_SIZE,
    runtime: str = DEFAULT_RUNTIME,
    compile: bool = True,
    max_batch_delay_ms: int = ArchiveSpec.max_batch_delay_ms,
) -> Path:
    """``model``'s archive in ``directory`` (a no-op when it is up to date there): seeded random
    full-size weights, or with ``tiny`` a tiny model trained on synthetic shapes (kept beside
    it); TorchServe ``batch_size`` 1 behind a gateway, more for direct clients."""
    from model_store.worker.tiny import save_tiny, train_tiny

    checkpoint = None
    if tiny:
        checkpoint = directory.parent / f"{model}-tiny.pt"
        if not checkpoint.exists():
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save_tiny(train_tiny(model), checkpoint)
    spec = ArchiveSpec(
        model,
        checkpoint=checkpoint,
        compile=compile,
        batch_size=batch_size,
        max_batch_delay_ms=max_batch_delay_ms,
        runtime=runtime,
    )
    build_archive(spec, directory, progress=progress)
    return directory


def start_torchserve(models: Sequence[str], archives: Path, run_dir: Path) -> TorchServe:
    """TorchServe serving ``models`` from ``archives``, once every one is ready."""
    server = TorchServe.on_free_ports(list(models), archives, run_dir).start()
    server.wait_ready(timeout=READY_TIMEOUT_S, progress=progress)
    return server


def start_gateway(
    env: Mapping[str, str], log_path: Path, module: str = "service"
) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m module --port PORT`` on a free port, once its /readyz answers 200."""
    port = free_ports(1)[0]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--port", str(port)],
            env=os.environ | dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
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


def gateway_fields(server: TorchServe, models: Sequence[str]) -> dict[str, str]:
    """The gateway settings (``GatewaySettings`` fields) that serve ``models`` through
    ``server``."""
    return {
        "models": ",".join(models),
        "torchserve_inference_url": server.inference_url,
        "torchserve_management_url": server.management_url,
        "torchserve_key_file": str(server.key_file),
    }


def gateway_env(server: TorchServe, models: Sequence[str]) -> dict[str, str]:
    """The same as ``GATEWAY_*`` environment variables, for a gateway process."""
    return {f"GATEWAY_{k.upper()}": v for k, v in gateway_fields(server, models).items()}


@dataclass(frozen=True)
class Stack:
    torchserve: TorchServe
    gateway_url: str | None
    """None when started with ``gateway=False`` (TorchServe alone)."""


@contextmanager
def start_stack(
    models: Sequence[str],
    workdir: Path,
    *,
    tiny: bool = False,
    compile: bool = True,
    batch_size: int = GATEWAY_FED_BATCH_SIZE,
    max_batch_delay_ms: int = ArchiveSpec.max_batch_delay_ms,
    gateway: bool = True,
) -> Iterator[Stack]:
    """Archives of ``models`` built in ``workdir``, TorchServe over them and (unless
    ``gateway=False``) the gateway in front, all on free loopback ports; everything stops on
    exit."""
    archives = workdir / "archives"
    for model in models:
        build(
            model,
            archives,
            tiny=tiny,
            compile=compile,
            batch_size=batch_size,
            max_batch_delay_ms=max_batch_delay_ms,
        )
    server = start_torchserve(models, archives, workdir / "run")
    process = None
    try:
        url = None
        if gateway:
            process, url = start_gateway(gateway_env(server, models), workdir / "gateway.log")
        yield Stack(server, url)
    finally:
        if process is not None:
            process.terminate()
            process.wait(30)
        server.stop()

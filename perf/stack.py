"""The processes a benchmark, a load test or the test suite runs against: archives, TorchServe
and gateways on free loopback ports. ``start_stack`` is all of it at once."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from contract.keys import bearer, key_refused
from contract.protocol import GATEWAY_FED_BATCH_SIZE, REQUESTS_COUNTER
from model_store.torchserve.host import free_ports
from model_store.torchserve.launcher import TorchServe
from model_store.worker.archive import ArchiveSpec, build_archive, parse_candidate_name
from model_store.zoo.fidelity import FidelityGate
from model_store.zoo.precision import FP32
from model_store.zoo.runtimes import DEFAULT_RUNTIME

from .common import progress

PROMETHEUS_DIR = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
"""The project's scrape config and rules, run as shipped with the targets moved to loopback."""
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
    precision: str = ArchiveSpec.precision,
    fidelity: FidelityGate = FidelityGate(),  # noqa: B008 -- frozen: one shared default
    compile: bool = True,
    max_batch_delay_ms: int = ArchiveSpec.max_batch_delay_ms,
) -> Path:
    """``model``'s archive in ``directory`` (a no-op when it is up to date there): seeded random
    full-size weights, or with ``tiny`` a tiny model trained on synthetic shapes (kept beside
    it); TorchServe ``batch_size`` 1 behind a gateway, more for direct clients."""
    from model_store.demo.tiny import save_tiny, train_tiny

    checkpoint = None
    if tiny:
        checkpoint = directory.parent / "weights" / f"{model}.pt"  # named as the suite names it
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
        precision=precision,
        fidelity=fidelity,
    )
    build_archive(spec, directory, progress=progress)
    return directory


def start_torchserve(
    models: Sequence[str],
    archives: Path,
    run_dir: Path,
    key_minutes: float | None = None,
    worker_env: Mapping[str, str] | None = None,
    frontend_warmup: int = 0,
) -> TorchServe:
    """TorchServe serving ``models`` from ``archives``, once every one is ready (and its
    frontend warm, with ``frontend_warmup`` requests: what ``make serve`` does); its keys live
    ``key_minutes`` (None: as ``TorchServe.key_minutes`` says), its workers get ``worker_env``
    over the defaults."""
    server = TorchServe.on_free_ports(
        list(models),
        archives,
        run_dir,
        key_minutes=key_minutes,
        worker_env=dict(worker_env or {}),
        frontend_warmup=frontend_warmup,
    )
    server.start()
    try:
        server.wait_ready(timeout=READY_TIMEOUT_S, progress=progress)
    except BaseException:  # the warm-up's failure leaves it running for its caller to stop
        server.stop()
        raise
    return server


async def post_direct(
    client: httpx.AsyncClient, server: TorchServe, path: str, **request: object
) -> httpx.Response:
    """A direct client's POST to ``server``'s inference API that survives key expiry as the
    gateway does: the key renewed before it expires, and after a refusal renewed and the
    request sent once more (TorchServe refuses a key before computing anything)."""
    url = f"{server.inference_url}{path}"
    sent = server.token("inference")
    response = await client.post(url, headers=bearer(sent), **request)  # type: ignore[arg-type]
    if key_refused(response.status_code, response.content):
        server.recover("inference", sent)
        response = await client.post(url, headers=server.headers("inference"), **request)  # type: ignore[arg-type]
    return response


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


@contextmanager
def start_prometheus(
    targets: Mapping[str, str], workdir: Path, scrape_interval_s: float = 5.0
) -> Iterator[str]:
    """A real Prometheus (Debian's package) running the project's scrape config and rules,
    each job's target replaced by ``targets[job]``, once it is ready; its URL."""
    import yaml

    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus missing: `make system-deps` installs Debian's package")
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    interval = f"{scrape_interval_s:g}s"
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(PROMETHEUS_DIR / "rules" / "*.yml")]
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]].removeprefix("http://")]}]
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_ports(1)[0]
    with (workdir / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(f"{url}/-/ready"):
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"Prometheus not ready; log: {workdir / 'prometheus.log'}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def requests_computed(metrics_url: str) -> float:
    """The inference requests a TorchServe (or a worker double) answered, by its own counter:
    which replica computed what, as the replica itself tells it."""
    text = httpx.get(f"{metrics_url}/metrics", timeout=10).text
    found = re.findall(rf"^{REQUESTS_COUNTER}\{{[^}}]*\}} (\S+)$", text, flags=re.M)
    return sum(map(float, found))


def started_answering(
    command: Sequence[str], urls: Sequence[str], what: str, timeout_s: float = 60.0
) -> subprocess.Popen[bytes]:
    """``command`` started from the repository root, once every one of ``urls`` answers HTTP
    (any status); stopped, and an error naming ``what``, if it exits or times out first."""
    process = subprocess.Popen(list(command), cwd=Path(__file__).resolve().parents[1])
    deadline = time.monotonic() + timeout_s
    for url in urls:
        while True:
            try:
                httpx.get(url, timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or process.poll() is not None:
                    process.terminate()
                    raise RuntimeError(f"{what} did not start") from None
                time.sleep(0.2)
    return process


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


GATE_OFF = FidelityGate(min_top1_agreement=0, min_top5_overlap=0, max_probability_shift=1)
"""A gate every build passes: for measuring the speed of random weights' low precisions."""


def runtime_archive(model: str, target: str, runtime: str, tiny: bool, **settings: Any) -> Path:
    """``model``'s archive for ``target`` served by ``runtime`` (``inductor``, ``openvino-int8``
    ...), kept between runs; random-weight low precisions are built with the gate off."""
    served, precision = parse_candidate_name(runtime)
    if precision != FP32 and not tiny:
        progress(
            f"{runtime}: random weights cannot pass the fidelity gate (their top-1 is a "
            "near-tie of 1000 classes, see bench.precision): built with the gate off, for speed"
        )
        settings["fidelity"] = GATE_OFF
    directory = bench_archives(f"{target}-{runtime}", tiny)
    return build(model, directory, runtime=served, precision=precision, **settings)

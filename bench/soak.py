"""Soak: the local stack for a long time under open-loop load, with faults on a schedule.

    python -m bench.soak [--duration-min 30] [--key-minutes 1] [--faults worker_kill,...]

The stack is what ``make serve`` runs, on free loopback ports: the gateway (its own process), a
real TorchServe serving the compared models (tiny models trained on the synthetic shapes, so
every answer's label can be checked) with token authorization on and keys that expire every
``--key-minutes``, kept running by the launcher's ``Supervisor``, and a real Prometheus scraping
both every 5 s. Traffic: Poisson arrivals at ``--load`` of the capacity measured first (closed
loop), labelled images alternating between the models. Faults, one every ``--fault-every-s`` in
turn: a model's worker SIGKILLed (TorchServe starts another), TorchServe's Java frontend
SIGKILLed (the Supervisor starts it again), a burst of hostile uploads (``bench.hostile``).

Every request is accounted for: a 200 with the right label, an honest 503/504 while a fault it
was caught in lasted (until its model answered 200 again), or the status its hostile upload
must get; the gateway's counters and Prometheus's must equal the client's. Per minute: p50/p99,
non-200 answers by code, RSS, open fds and threads of the gateway and of each worker, queue
depth; the growth of RSS and fds per hour after warm-up. Prints tables, writes JSON and a PNG
to ``bench/results/``. The default run takes the duration plus about 3 minutes (archives are
kept between runs under ``.run/bench/tiny/soak``; the first run trains and compiles them).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

from contract.keys import RENEWABLE_KINDS
from model_store.demo.synthetic import CLASS_NAMES, encode, make_images
from model_store.torchserve.launcher import TorchServe
from model_store.torchserve.supervisor import Supervisor
from model_store.zoo.registry import DEFAULT_MODELS, parse_model_names
from perf.common import RESULTS_DIR, comma_list, progress
from perf.stack import (
    bench_archives,
    build,
    gateway_env,
    start_gateway,
    start_prometheus,
    start_torchserve,
)

from .hostile import HOSTILE, send_hostile
from .soak_report import NOT_SENT, Fault, Outcome, Sample, SoakRun, report

FAULTS = ("worker_kill", "frontend_kill", "hostile_burst")
SCRAPE_INTERVAL_S = 5.0
UPLOAD_TIMEOUT_S = 3.0
"""The soak gateway's ``upload_timeout_s``: slow uploads are cut off (408) within seconds."""
POOL_SIZE = 24
MAX_IN_FLIGHT = 512
"""Requests the load generator keeps waiting at once (its connection pool): an arrival past it
is recorded as the generator's drop, not sent (a client pool that queues thousands of requests
spends its CPU managing them and stops generating load at all)."""


def labelled_pool(seed: int) -> list[tuple[bytes, str, str]]:
    """Phone-ish uploads of the synthetic shapes, JPEG and PNG, each with its content type and
    label."""
    images, labels = make_images(POOL_SIZE, seed=seed, size=(320, 240))
    formats = ("PNG", "JPEG")
    return [
        (encode(im, formats[i % 2]), f"image/{formats[i % 2].lower()}", CLASS_NAMES[label])
        for i, (im, label) in enumerate(zip(images, labels, strict=True))
    ]


async def classify(
    client: httpx.AsyncClient, url: str, model: str, item: tuple[bytes, str, str], run: SoakRun
) -> None:
    data, content_type, label = item
    sent = time.monotonic()
    status, right, code = 0, False, None
    try:
        response = await client.post(
            f"{url}/v1/models/{model}/classify",
            content=data,
            headers={"Content-Type": content_type},
        )
        status = response.status_code
        answer = response.json()
        right = status == 200 and answer["results"][0]["predictions"][0]["label"] == label
        code = None if status == 200 else answer["error"]["code"]
    except (httpx.HTTPError, ValueError, LookupError, TypeError):
        pass  # no answer (status 0), or one that is not the gateway's JSON
    run.outcomes.append(
        Outcome(sent - run.t0, time.monotonic() - sent, model, "labelled", status, right, code)
    )


async def measure_capacity(
    client: httpx.AsyncClient, url: str, pools: dict[str, list], seconds: float
) -> float:
    """Requests per second the stack answers 200 to, 8 closed-loop clients over both models."""
    done = 0
    stop = time.monotonic() + seconds

    async def user(index: int) -> None:
        nonlocal done
        models = list(pools)
        while time.monotonic() < stop:
            model = models[(index + done) % len(models)]
            data, content_type, _ = pools[model][done % POOL_SIZE]
            response = await client.post(
                f"{url}/v1/models/{model}/classify",
                content=data,
                headers={"Content-Type": content_type},
            )
            done += response.status_code == 200

    await asyncio.gather(*(user(i) for i in range(8)))
    return done / seconds


async def generate(client: httpx.AsyncClient, url: str, pools: dict, run: SoakRun, args) -> None:
    """Poisson arrivals at ``run.rate`` until the end; every request awaited to its answer,
    none sent while ``MAX_IN_FLIGHT`` wait (those are the generator's drops)."""
    rng = random.Random(7)
    models = list(pools)
    tasks: set[asyncio.Task[None]] = set()
    scheduled = time.monotonic()
    index = 0
    while (scheduled := scheduled + rng.expovariate(run.rate)) < run.t0 + args.duration_s:
        if (delay := scheduled - time.monotonic()) > 0:
            await asyncio.sleep(delay)
        model = models[index % len(models)]
        item = pools[model][index // len(models) % POOL_SIZE]
        index += 1
        if len(tasks) >= MAX_IN_FLIGHT:
            run.outcomes.append(Outcome(scheduled - run.t0, 0.0, model, "labelled", NOT_SENT))
            continue
        task = asyncio.create_task(classify(client, url, model, item, run))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)


def frontend_pid(server: TorchServe) -> int | None:
    """The Java frontend under TorchServe's launcher process."""
    if server.process is None:
        return None
    try:
        children = psutil.Process(server.process.pid).children(recursive=True)
    except psutil.Error:
        return None
    return next((c.pid for c in children if c.name() == "java"), None)


async def inject(
    client: httpx.AsyncClient, url: str, server: TorchServe, run: SoakRun, args
) -> None:
    """The faults of ``args.faults`` in turn, one every ``args.fault_every_s`` after warm-up,
    none in the last ``fault_every_s / 2`` (so the last one's recovery is measured)."""
    at = args.warmup_s
    index = 0
    while at < args.duration_s - args.fault_every_s / 2:
        await asyncio.sleep(max(0.0, run.t0 + at - time.monotonic()))
        kind = args.faults[index % len(args.faults)]
        model = args.models[index // len(args.faults) % len(args.models)]
        fault = Fault(kind, time.monotonic() - run.t0)
        progress(f"[{fault.at:6.0f} s] fault: {kind}")
        if kind == "worker_kill":
            for worker in await asyncio.to_thread(server.workers, model):
                os.kill(int(worker["pid"]), signal.SIGKILL)
            fault.models = [model]
        elif kind == "frontend_kill":
            if (pid := frontend_pid(server)) is not None:
                os.kill(pid, signal.SIGKILL)
            fault.models = list(args.models)
        else:
            await hostile_burst(client, url, run, args)
        run.faults.append(fault)
        at += args.fault_every_s
        index += 1


async def hostile_burst(client: httpx.AsyncClient, url: str, run: SoakRun, args) -> None:
    """``args.burst_each`` uploads of every hostile kind at once, to the models in turn."""

    async def one(hostile, model: str) -> None:
        sent = time.monotonic()
        status = await send_hostile(client, url, model, hostile)
        outcome = Outcome(sent - run.t0, time.monotonic() - sent, model, hostile.kind, status)
        outcome.right = status == hostile.expected_status
        run.outcomes.append(outcome)

    jobs = [
        one(hostile, args.models[(i + j) % len(args.models)])
        for i, hostile in enumerate(HOSTILE)
        for j in range(args.burst_each)
    ]
    await asyncio.gather(*jobs)


def usage(pid: int | None) -> dict[str, float] | None:
    """RSS (MB), open file descriptors and threads of one process; None when it is gone (or
    not there yet: TorchServe lists a starting worker's pid as -1)."""
    if pid is None or pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            return {
                "pid": pid,
                "rss_mb": process.memory_info().rss / 2**20,
                "fds": process.num_fds(),
                "threads": process.num_threads(),
            }
    except psutil.Error:
        return None


def queue_depths(text: str) -> dict[str, float]:
    return {
        m[1]: float(m[2])
        for m in re.finditer(r'^gateway_queue_depth\{model="([^"]+)"\} (\S+)$', text, flags=re.M)
    }


async def sample(
    client: httpx.AsyncClient, url: str, server: TorchServe, gateway_pid: int, run: SoakRun, args
) -> None:
    """Every ``args.sample_s``: the processes' resources, queue depths, and which keys
    TorchServe holds (a change is a renewal, or a restart)."""
    tokens: dict[str, str] = {}
    while (now := time.monotonic() - run.t0) < args.duration_s:
        workers = {}
        for model in args.models:
            described = await asyncio.to_thread(server.workers, model)
            workers[model] = usage(int(described[0]["pid"])) if described else None
        try:
            depth = queue_depths((await client.get(f"{url}/metrics")).text)
        except httpx.HTTPError:
            depth = {}
        run.samples.append(
            Sample(now, usage(gateway_pid), workers, usage(frontend_pid(server)), depth)
        )
        keys = server.keyring.keys()
        for kind in RENEWABLE_KINDS:
            if kind in keys and tokens.get(kind) != keys[kind].token:
                if kind in tokens:
                    run.key_changes.append((now, kind))
                tokens[kind] = keys[kind].token
        await asyncio.sleep(args.sample_s)


def model_requests(text: str) -> dict[str, int]:
    """``gateway_requests_total`` by ``model/code``, both protocols (a hostile kind goes to
    ``/v2``) summed."""
    pattern = r'^gateway_requests_total\{code="(\d+)",model="([^"]+)",protocol="[^"]+"\} (\S+)$'
    counts: Counter[str] = Counter()
    for m in re.finditer(pattern, text, flags=re.M):
        counts[f"{m[2]}/{m[1]}"] += int(float(m[3]))
    return dict(counts)


async def prometheus_total(client: httpx.AsyncClient, prometheus: str) -> float | None:
    response = await client.get(
        f"{prometheus}/api/v1/query",
        params={"query": 'sum(gateway_requests_total{job="gateway"})'},
    )
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if result else None


async def soak(url: str, server: TorchServe, gateway_pid: int, prometheus: str, args) -> SoakRun:
    pools = {model: labelled_pool(seed=i) for i, model in enumerate(args.models)}
    if "hostile_burst" in args.faults:
        progress("making the hostile uploads ...")
        for hostile in HOSTILE:  # made once (cached), not in the load loop's first burst
            hostile.body()
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        capacity = None
        if args.rate is None:
            progress(f"measuring capacity for {args.capacity_s:g} s ...")
            capacity = await measure_capacity(client, url, pools, args.capacity_s)
        rate = args.rate or args.load * capacity
        progress(f"soak: {rate:.1f} req/s for {args.duration_s / 60:g} min, faults {args.faults}")
        baseline = model_requests((await client.get(f"{url}/metrics")).text)
        run = SoakRun(time.monotonic(), rate, capacity)
        await asyncio.gather(
            generate(client, url, pools, run, args),
            inject(client, url, server, run, args),
            sample(client, url, server, gateway_pid, run, args),
        )
        run.elapsed_s = time.monotonic() - run.t0
        final = model_requests((await client.get(f"{url}/metrics")).text)
        run.gateway_counts = {k: v - baseline.get(k, 0) for k, v in final.items()}
        run.gateway_counts = {k: v for k, v in run.gateway_counts.items() if v}
        await asyncio.sleep(2 * SCRAPE_INTERVAL_S + 1)  # Prometheus's last scrape
        run.prometheus_total = await prometheus_total(client, prometheus)
        if run.prometheus_total is not None:
            run.prometheus_total -= sum(baseline.values())
    return run


def archives_for(models: Sequence[str], args) -> Path:
    if args.archives is not None:
        return args.archives
    directory = bench_archives("soak", tiny=True)
    for model in models:
        build(model, directory, tiny=True)
    return directory


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", type=parse_model_names, default=list(DEFAULT_MODELS))
    parser.add_argument("--duration-min", type=float, default=30.0)
    parser.add_argument("--key-minutes", type=float, default=1.0, help="TorchServe key lifetime")
    parser.add_argument("--load", type=float, default=0.7, help="share of measured capacity")
    parser.add_argument("--rate", type=float, help="req/s offered instead (skips measuring)")
    parser.add_argument("--capacity-s", type=float, default=20.0)
    parser.add_argument(
        "--faults",
        type=comma_list(),
        default=list(FAULTS),
        help=f"in turn, from {','.join(FAULTS)}",
    )
    parser.add_argument("--fault-every-s", type=float, default=120.0)
    parser.add_argument("--warmup-s", type=float, default=60.0, help="no faults, no growth fit")
    parser.add_argument("--burst-each", type=int, default=3, help="hostile uploads of each kind")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--archives", type=Path, help="archives of --models (default: built)")
    parser.add_argument("--workdir", type=Path, help="logs, TorchServe and Prometheus data")
    parser.add_argument("--out", type=Path, help="JSON path (default: bench/results/)")
    args = parser.parse_args(argv)
    if unknown := set(args.faults) - set(FAULTS):
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    args.duration_s = args.duration_min * 60
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda signum, _: sys.exit(128 + signum))  # stop what it started
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="soak-"))
    archives = archives_for(args.models, args)
    server = start_torchserve(args.models, archives, workdir / "run", args.key_minutes)
    supervisor = Supervisor(server, progress=progress)
    supervisor.start()
    gateway = None
    try:
        env = gateway_env(server, args.models) | {"GATEWAY_UPLOAD_TIMEOUT_S": f"{UPLOAD_TIMEOUT_S}"}
        gateway, url = start_gateway(env, workdir / "gateway.log")
        targets = {"gateway": url, "torchserve": server.metrics_url}
        with start_prometheus(targets, workdir / "prometheus", SCRAPE_INTERVAL_S) as prometheus:
            run = asyncio.run(soak(url, server, gateway.pid, prometheus, args))
        run.restarts = supervisor.restarts
    finally:
        if gateway is not None:
            gateway.terminate()
            gateway.wait(30)
        supervisor.stop()
    out = args.out or RESULTS_DIR / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    return report(run, args, out)


if __name__ == "__main__":
    main()

"""Does the gateway spread batches over every worker, do more workers serve more, and does the
gateway become the limit first?

``python -m bench.scaleout [--real 1,2,3] [--replicas 1,2,4,8,16,32] [--modes discovery,service]``

Two parts, each run both ways a gateway can reach its workers (``--modes``): ``discovery``, the
gateway finding every worker itself (here the static URL list; DNS is the same code after
resolving), and ``service``, one address in front of them that balances connections as a
Kubernetes Service does (``bench/service_proxy.py``), with the gateway's old fixed allowance of
one batch in flight per replica.

- **Real workers** (``--real``): N TorchServes serving ``--runtime`` (OpenVINO int8 eca_resnet50
  by default), each pinned to a CPU of its own in turn over this machine's (its threads sized
  to it), behind the real gateway (``python -m service``). Open-loop Poisson arrivals of camera
  uploads, searched by ``--step`` (``search_capacity``): the capacity at the SLO is the highest
  rate whose p99 <= ``--slo-ms`` with refusals within the error budget
  (``perf.slo``: the last rate before the knee).
- **Worker doubles** (``--replicas``): N doubles (``bench/worker_doubles.py``: a measured
  service-time distribution, all in one process, so N is not bounded by the cores) at ``--load``
  x their capacity, capped at ``--max-rate`` (what this machine can offer and take): served
  img/s, p99, and the gateway's CPU seconds per image, so how many workers one gateway core
  feeds.

For each run: the share of the batches each replica computed (its own request counter).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from model_store.demo.synthetic import encode, make_images
from model_store.torchserve.config import CONFIG_TEMPLATE
from model_store.torchserve.host import free_ports
from model_store.torchserve.launcher import TorchServe
from perf.common import columns_table, comma_list, environment, progress, write_results
from perf.images import CAMERA_UPLOADS, image_pool
from perf.load import open_loop
from perf.load import summarize as summarize_load
from perf.slo import ERROR_BUDGET, meets_slo, rate_point, target_capacity
from perf.stack import READY_TIMEOUT_S, requests_computed, runtime_archive, start_gateway

from .service_proxy import start_service_proxy
from .worker_doubles import start_doubles, worker_capacity

MODEL = "eca_resnet50"
MODES = ("discovery", "service")


@dataclass
class Fleet:
    """N workers: where the gateway sends batches, asks for readiness, and reads each one's
    request counter."""

    inference_urls: list[str]
    management_urls: list[str]
    metrics_urls: list[str]

    def computed(self) -> list[float]:
        return [requests_computed(url) for url in self.metrics_urls]


def _port(url: str) -> int:
    return urlsplit(url).port or 80


@contextmanager
def gateway_for(fleet: Fleet, mode: str, log: Path) -> Iterator[tuple[psutil.Process, str]]:
    """The real gateway in front of ``fleet``, reaching it as ``mode`` says."""
    if mode == "discovery":
        inference, management = ",".join(fleet.inference_urls), ",".join(fleet.management_urls)
        allowance: dict[str, str] = {}
        proxy = None
    else:
        listen_inference, listen_management = free_ports(2)
        proxy = start_service_proxy(
            {
                listen_inference: [_port(url) for url in fleet.inference_urls],
                listen_management: [_port(url) for url in fleet.management_urls],
            }
        )
        inference = f"http://127.0.0.1:{listen_inference}"
        management = f"http://127.0.0.1:{listen_management}"
        allowance = {"GATEWAY_MAX_CONCURRENT_BATCHES": str(len(fleet.inference_urls))}
    env = {
        "GATEWAY_MODELS": MODEL,
        "GATEWAY_TORCHSERVE_INFERENCE_URL": inference,
        "GATEWAY_TORCHSERVE_MANAGEMENT_URL": management,
        "GATEWAY_TORCHSERVE_KEY_FILE": "",
        "GATEWAY_QUEUE_LIMIT": "1024",
        "GATEWAY_MAX_CONCURRENT_UPLOADS": "1024",
    } | allowance
    gateway, url = start_gateway(env, log)
    try:
        yield psutil.Process(gateway.pid), url
    finally:
        for process in (gateway, proxy):
            if process is not None:
                process.terminate()
                process.wait(30)


@contextmanager
def doubles_fleet(replicas: int, args: argparse.Namespace) -> Iterator[Fleet]:
    ports = free_ports(replicas)
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    process = start_doubles(ports, args.base_ms, args.per_image_ms)
    try:
        yield Fleet(urls, urls, urls)
    finally:
        process.terminate()
        process.wait(30)


@contextmanager
def torchserve_fleet(replicas: int, archives: Path, workdir: Path) -> Iterator[Fleet]:
    """``replicas`` TorchServes, each pinned to one CPU in turn, token authorization off (the
    gateway's key file names one TorchServe's keys)."""
    template = workdir / "config.properties"
    template.write_text(CONFIG_TEMPLATE.read_text() + "disable_token_authorization=true\n")
    cpus = sorted(os.sched_getaffinity(0))
    servers = []
    try:
        for index in range(replicas):
            server = TorchServe.on_free_ports(
                [MODEL],
                archives,
                workdir / f"ts-{replicas}-{index}",
                config_template=template,
                cpus=frozenset({cpus[index % len(cpus)]}),
            )
            servers.append(server.start())
        for server in servers:
            server.wait_ready(timeout=READY_TIMEOUT_S, progress=progress)
        yield Fleet(
            [s.inference_url for s in servers],
            [s.management_url for s in servers],
            [s.metrics_url for s in servers],
        )
    finally:
        for server in servers:
            server.stop()


async def offer(
    url: str, gateway: psutil.Process, fleet: Fleet, rate: float, duration: float, pool: list[bytes]
) -> dict[str, Any]:
    """``rate`` img/s of Poisson arrivals for ``duration`` s through the gateway: the latency
    summary, each replica's share of the batches, the gateway's CPU per image."""
    limits = httpx.Limits(max_connections=1024, max_keepalive_connections=1024)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def send(data: bytes) -> int:
            response = await client.post(
                f"/v1/models/{MODEL}/classify", files=[("file", ("x.jpg", data, "image/jpeg"))]
            )
            return response.status_code

        for data in pool[: 2 * len(fleet.inference_urls)]:  # warm up the connections
            await send(data)
        before = fleet.computed()
        cpu_before = sum(gateway.cpu_times()[:2])
        outcomes, lags, elapsed = await open_loop(send, pool, rate, duration, seed=1)
        cpu = sum(gateway.cpu_times()[:2]) - cpu_before
    batches = [after - was for after, was in zip(fleet.computed(), before, strict=True)]
    answered = sum(status == 200 for status, _ in outcomes) or 1
    return (
        {"offered": rate}
        | summarize_load(outcomes, lags, elapsed, 1.0)
        | {
            "replicas_used": sum(count > 0 for count in batches),
            "share_min": min(batches) / (sum(batches) or 1),
            "share_max": max(batches) / (sum(batches) or 1),
            "gateway_cpu_ms_per_image": cpu / answered * 1000,
            "gateway_cpu_share": cpu / elapsed,
        }
    )


def run_at(
    labels: dict[str, Any],
    url: str,
    gateway: psutil.Process,
    fleet: Fleet,
    duration: float,
    pool: list[bytes],
    rate: float,
) -> dict[str, Any]:
    """``offer`` at ``rate``, its row labelled, reported as it ends."""
    row = labels | asyncio.run(offer(url, gateway, fleet, rate, duration, pool))
    report_row(row)
    return row


def report_row(row: dict[str, Any]) -> None:
    progress(
        f"  {row['target']}: {row['offered']:.1f} img/s offered, {row['img_per_s']:.1f} served, "
        f"p99 {row['p99_ms']:.0f} ms, 503 {row['refused_503']:.1%}, {row['replicas_used']} "
        f"replicas used, batch shares {row['share_min']:.2f}-{row['share_max']:.2f}, gateway "
        f"{row['gateway_cpu_ms_per_image']:.2f} ms CPU/img"
    )


def search_capacity(
    measure: Callable[[float], dict[str, Any]], rate: float, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Rates raised by ``--step`` while they pass the SLO, up to the first that fails; from a
    first rate that fails, lowered until one passes (at most ``--max-steps`` runs)."""
    rows: list[dict[str, Any]] = []
    lowering = False
    for _ in range(args.max_steps):
        rows.append(row := measure(rate))
        passed = meets_slo(rate_point(row), args.slo_ms)
        if (passed and lowering) or (not passed and len(rows) > 1 and not lowering):
            break
        lowering = not passed
        rate = rate * args.step if passed else rate / args.step
    return rows


def real_part(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Capacity at the SLO of 1, 2, 3 ... pinned TorchServes, each mode, searched from half
    the last capacity found per replica (``search_capacity``)."""
    archives = args.archives or runtime_archive(MODEL, "gateway-fed", args.runtime, tiny=False)
    pool = image_pool(24, CAMERA_UPLOADS, quality=88)
    rows: list[dict[str, Any]] = []
    per_replica = args.start_rate
    for replicas in args.real:
        with torchserve_fleet(replicas, archives, workdir) as fleet:
            start = max(1.0, 0.5 * per_replica * replicas)
            for mode in args.modes:
                target = f"{mode}-{replicas}"
                labels = {"target": target, "mode": mode, "replicas": replicas}
                with gateway_for(fleet, mode, workdir / f"{target}.log") as (gateway, url):
                    measure = partial(run_at, labels, url, gateway, fleet, args.real_duration, pool)
                    rows += search_capacity(measure, start, args)
                if mode == "discovery" and (found := target_capacity(rows, target, args.slo_ms)):
                    per_replica = found / replicas
    capacity = [
        at_capacity(rows, replicas, mode, args.slo_ms)
        for replicas in args.real
        for mode in args.modes
    ]
    served = str(args.archives) if args.archives else args.runtime
    return {"runtime": served, "rows": rows, "capacity": capacity}


def at_capacity(
    rows: list[dict[str, Any]], replicas: int, mode: str, slo_ms: float
) -> dict[str, Any]:
    """The capacity of ``replicas`` reached as ``mode`` says, with what its run measured (p99,
    shares), for the summary table."""
    target = f"{mode}-{replicas}"
    best = target_capacity(rows, target, slo_ms)
    [row] = [r for r in rows if r["target"] == target and r["offered"] == best] or [{}]
    keys = ("p99_ms", "replicas_used", "share_min", "share_max", "gateway_cpu_ms_per_image")
    return {"replicas": replicas, "mode": mode, "capacity_img_per_s": best} | {
        key: row.get(key) for key in keys
    }


def doubles_part(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """N worker doubles at ``--load`` x their capacity, or ``--max-rate`` where that is less
    (what one load generator and one gateway can offer and take on this machine's cores): past
    it the replicas are less loaded, and the rows show what routing over more of them costs."""
    upload = encode(make_images(1, seed=3, size=(args.upload_side,) * 2)[0][0], "JPEG")
    capacity = worker_capacity(args.base_ms, args.per_image_ms)
    progress(
        f"worker double: {args.base_ms:g} ms + {args.per_image_ms:g} ms/image per batch, "
        f"{capacity:.0f} img/s each; {len(upload) / 1024:.0f} KiB uploads"
    )
    rows = []
    for replicas in args.replicas:
        with doubles_fleet(replicas, args) as fleet:
            for mode in args.modes:
                target = f"{mode}-{replicas}"
                labels = {"target": target, "mode": mode, "replicas": replicas}
                rate = min(args.load * replicas * capacity, args.max_rate)
                with gateway_for(fleet, mode, workdir / f"double-{target}.log") as (gw, url):
                    rows.append(run_at(labels, url, gw, fleet, args.duration, [upload], rate))
    for row in rows:
        row["replica_load"] = row["offered"] / (row["replicas"] * capacity)
    per_image = min(r["gateway_cpu_ms_per_image"] for r in rows if r["mode"] == MODES[0]) / 1000
    return {
        "worker_capacity_img_per_s": capacity,
        "rows": rows,
        "gateway_cpu_ms_per_image": per_image * 1000,
        "workers_one_gateway_core_feeds": math.floor(1 / per_image / capacity),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m bench.scaleout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--real", type=comma_list(int), default=[1, 2, 3], help="'' skips it")
    parser.add_argument("--replicas", type=comma_list(int), default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--modes", type=comma_list(str), default=list(MODES))
    parser.add_argument("--runtime", default="openvino-int8", help="what the real workers serve")
    parser.add_argument(
        "--archives", type=Path, help=f"serve {MODEL}.mar from here instead of --runtime's"
    )
    parser.add_argument("--slo-ms", type=float, default=1000.0)
    parser.add_argument("--start-rate", type=float, default=12.0, help="img/s per real replica")
    parser.add_argument("--step", type=float, default=1.25, help="rate x this until it fails")
    parser.add_argument("--max-steps", type=int, default=10)
    parser.add_argument("--real-duration", type=float, default=12.0)
    parser.add_argument("--load", type=float, default=0.7, help="offered / the doubles' capacity")
    parser.add_argument("--max-rate", type=float, default=180.0, help="img/s, at most")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per doubles run")
    parser.add_argument("--base-ms", type=float, default=10.0)
    parser.add_argument("--per-image-ms", type=float, default=14.0)
    parser.add_argument("--upload-side", type=int, default=256, help="the doubles' JPEG, px")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if unknown := set(args.modes) - set(MODES):
        parser.error(f"unknown modes {sorted(unknown)}; choose from {MODES}")
    results: dict[str, Any] = {
        "benchmark": "scaleout",
        "environment": environment("cpu") | {"cpus_usable": len(os.sched_getaffinity(0))},
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:  # gateway logs, run dirs
        if args.real:
            results["real"] = real_part(args, Path(tmp))
        if args.replicas:
            results["doubles"] = doubles_part(args, Path(tmp))
    print_tables(results, args)
    progress(f"JSON: {write_results('scaleout', results, args.out)}")
    return results


def print_tables(results: dict[str, Any], args: argparse.Namespace) -> None:
    shares = [
        ("replicas used", "replicas_used"),
        ("batch share min", "share_min"),
        ("batch share max", "share_max"),
        ("gateway CPU ms/img", "gateway_cpu_ms_per_image"),
    ]
    if real := results.get("real"):
        print(
            f"\n{real['runtime']} TorchServes, one CPU each: capacity at p99 <= "
            f"{args.slo_ms:g} ms, < {ERROR_BUDGET:.1%} refused"
        )
        columns = [
            ("replicas", "replicas"),
            ("mode", "mode"),
            ("img/s at SLO", "capacity_img_per_s"),
            ("p99 ms", "p99_ms"),
        ]
        print(columns_table([*columns, *shares], real["capacity"]))
    if doubles := results.get("doubles"):
        print(
            f"\nworker doubles at {args.load:g} x their capacity, at most {args.max_rate:g} img/s"
        )
        columns = [
            ("replicas", "replicas"),
            ("mode", "mode"),
            ("offered img/s", "offered"),
            ("load per replica", "replica_load"),
            ("served img/s", "img_per_s"),
            ("p50 ms", "p50_ms"),
            ("p99 ms", "p99_ms"),
            ("503", "refused_503"),
        ]
        print(columns_table([*columns, *shares], doubles["rows"]))
        print(
            f"one gateway core at {doubles['gateway_cpu_ms_per_image']:.2f} ms CPU/img feeds about "
            f"{doubles['workers_one_gateway_core_feeds']} workers of "
            f"{doubles['worker_capacity_img_per_s']:.0f} img/s at their capacity"
        )


if __name__ == "__main__":
    main()

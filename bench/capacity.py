"""Capacity benchmark: open-loop load (Poisson arrivals at a sweep of offered rates), so queueing
shows instead of being hidden by closed-loop clients that wait for their last answer.

    python -m bench.capacity                                  # eca_resnet50, 4..24 img/s
    python -m bench.capacity --rates 2,4,8 --duration 10 --tiny   # a smoke run in a minute
    python -m bench.capacity --runtimes inductor,openvino         # served img/s per runtime
    python -m bench.capacity --runtimes inductor,inductor-bf16,inductor-int8   # per precision

Targets, measured interleaved at every rate (the order rotates from one rate to the next):

- ``gateway-deadline``: the gateway with the deadline-aware batcher (the default) and the SLO as
  its requests' deadline, in front of TorchServe (batchSize 1: the gateway batches);
- ``gateway-deadline-pipelined``: the same with two batches in flight per model (the next batch
  waits in TorchServe while one runs, so the worker never idles for the HTTP round trip);
- ``gateway-fixed``: the same gateway and TorchServe with a fixed batching delay (5 ms, two
  batches in flight: the previous defaults), no deadline;
- ``torchserve-direct``: TorchServe alone with its own batching (batchSize 8, 10 ms);
- ``inprocess``: the gateway running the same archive in its own process (deadline-aware);
- ``gateway-deadline@RUNTIME``: with ``--runtimes inductor,openvino``, ``gateway-deadline`` again
  in front of a TorchServe serving the archive built for each further runtime: served img/s per
  runtime, in the same interleaved sweep (the other targets use the first runtime). A runtime
  may name a precision, ``inductor-int8`` or ``openvino-bf16``: served img/s per precision.

Latency is measured from each request's scheduled arrival (no coordinated omission). Per target
and rate: achieved img/s, p50/p90/p99, 503 share (refused: queue full or deadline unmeetable),
other errors, answers later than the SLO, goodput (answers within the SLO per second);
capacity at SLO (``perf.slo``) = the last offered rate before the knee with p99 <= SLO and
< 0.1% of requests not answered 200 (so shedding early counts against it, answering late only
through p99). Also: cold start
(TorchServe start to ready, first request per batch bucket against the steady state, a killed
worker back to READY) and the gateway alone over a null backend (images per CPU-second of the
gateway process: how many workers one gateway can feed).
Writes a table, a PNG of p99 vs offered load, and JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from model_store.torchserve.launcher import TorchServe
from model_store.worker.archive import ArchiveSpec
from model_store.zoo.precision import FP32, PRECISIONS
from model_store.zoo.runtimes import DEFAULT_RUNTIME, RUNTIMES
from perf.common import (
    RESULTS_DIR,
    columns_table,
    comma_list,
    environment,
    progress,
    write_results,
)
from perf.images import CAMERA_UPLOADS, image_pool
from perf.load import open_loop, summarize
from perf.slo import ERROR_BUDGET, target_capacity
from perf.stack import (
    runtime_archive,
    start_gateway,
    start_torchserve,
)

from .capacity_targets import TARGETS, deep_queue_gateway, make_senders
from .cold_start import crash_restart_s, first_calls
from .null_gateway import null_gateway_efficiency


async def sweep(
    urls: dict[str, str], args: argparse.Namespace, pool: list[bytes], direct_server: TorchServe
) -> list[dict[str, Any]]:
    rows = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        senders = make_senders(client, urls, args.model, direct_server)
        for send in senders.values():  # warm every path once
            await send(pool[0])
        for index, rate in enumerate(args.rates):
            order = list(senders)[index % len(senders) :] + list(senders)[: index % len(senders)]
            for target in order:
                progress(f"{rate:g} img/s offered for {args.duration:g} s: {target}")
                outcomes, lags, elapsed = await open_loop(
                    senders[target], pool, rate, args.duration, seed=index
                )
                row = {"target": target, "offered": rate}
                row |= summarize(outcomes, lags, elapsed, args.slo_ms / 1000)
                progress(
                    f"    {row['img_per_s']:.1f} img/s, p50 {row['p50_ms']:.0f} ms, "
                    f"p99 {row['p99_ms']:.0f} ms, 503 {row['refused_503']:.1%}, "
                    f"late {row['late']:.1%}"
                )
                rows.append(row)
                await asyncio.sleep(args.pause)
    return rows


def plot(rows: list[dict[str, Any]], targets: list[str], slo_ms: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5))
    for target in targets:
        points = [(r["offered"], r["p99_ms"]) for r in rows if r["target"] == target]
        if points:
            axis.plot(*zip(*points, strict=True), marker="o", label=target)
    axis.axhline(slo_ms, color="grey", linestyle="--", label=f"SLO {slo_ms:g} ms")
    axis.set_yscale("log")
    axis.set_xlabel("offered load (img/s, Poisson arrivals)")
    axis.set_ylabel("p99 latency (ms)")
    axis.set_title("p99 vs offered load: the knee is the capacity")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def served_per_runtime(
    rows: list[dict[str, Any]], runtimes: list[str], capacity: dict[str, float | None]
) -> dict[str, dict[str, float | None]]:
    """Per runtime, through the same production path (``gateway-deadline``): the most img/s it
    answered at any offered rate, and its capacity at the SLO."""
    result = {}
    for index, runtime in enumerate(runtimes):
        target = "gateway-deadline" if index == 0 else f"gateway-deadline@{runtime}"
        achieved = [r["img_per_s"] for r in rows if r["target"] == target]
        result[runtime] = {
            "max_achieved_img_per_s": max(achieved, default=None),
            "capacity_at_slo": capacity.get(target),
        }
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="eca_resnet50")
    parser.add_argument(
        "--rates", type=comma_list(float), default="4,8,12,16,20,24", help="offered img/s"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate/target")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between runs")
    parser.add_argument("--slo-ms", type=float, default=1000.0)
    parser.add_argument("--null-seconds", type=float, default=10.0)
    parser.add_argument(
        "--runtimes",
        type=comma_list(),
        default=DEFAULT_RUNTIME,
        help=f"comma list of {', '.join(RUNTIMES)}, each optionally -bf16 or -int8: the first "
        "serves every target, each further one adds a gateway-deadline@RUNTIME target",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny trained model (smoke runs)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    known = {f"{r}-{p}" if p != FP32 else r for r in RUNTIMES for p in PRECISIONS}
    if unknown := set(args.runtimes) - known:
        parser.error(f"unknown runtimes {sorted(unknown)}; choose from {sorted(known)}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    pool = image_pool(24, CAMERA_UPLOADS, quality=88)
    first, *others = args.runtimes

    fed = runtime_archive(args.model, "gateway-fed", first, args.tiny)
    direct = runtime_archive(args.model, "direct", first, args.tiny, batch_size=8)
    others_fed = {r: runtime_archive(args.model, "gateway-fed", r, args.tiny) for r in others}
    targets = [*TARGETS, *(f"gateway-deadline@{runtime}" for runtime in others)]
    processes: list[subprocess.Popen[bytes]] = []
    servers: list[TorchServe] = []
    with tempfile.TemporaryDirectory(prefix="bench-capacity-") as tmp:
        workdir = Path(tmp)
        ready_s = {}
        for runtime, archives in {first: fed, **others_fed}.items():
            progress(f"cold start: TorchServe ({runtime}, gateway-fed archive) to ready ...")
            started = time.perf_counter()
            servers.append(start_torchserve([args.model], archives, workdir / runtime))
            ready_s[runtime] = time.perf_counter() - started
            progress(f"  ready after {ready_s[runtime]:.1f} s")
        behind, *others_behind = servers
        direct_server = start_torchserve([args.model], direct, workdir / "ts-direct")
        servers.append(direct_server)
        try:
            buckets = ArchiveSpec(args.model).batch_buckets
            cold = {
                "torchserve_ready_s": ready_s[first],
                "torchserve_ready_s_per_runtime": ready_s,
                "first_calls": first_calls(behind, args.model, pool, buckets),
                "crash_to_ready_s": crash_restart_s(behind, args.model),
            }
            progress(f"  worker killed: READY again after {cold['crash_to_ready_s']:.1f} s")
            base = deep_queue_gateway(args.model, behind)
            slo = {"GATEWAY_MODEL_DEADLINE_MS": f'{{"{args.model}": {args.slo_ms}}}'}
            gateways = {
                "gateway-deadline": base | slo,
                "gateway-deadline-pipelined": base | slo | {"GATEWAY_MAX_CONCURRENT_BATCHES": "2"},
                "gateway-fixed": base
                | {"GATEWAY_BATCHING": "fixed", "GATEWAY_MAX_CONCURRENT_BATCHES": "2"},
                "inprocess": base
                | slo
                | {"GATEWAY_BACKEND": "inprocess", "GATEWAY_ARCHIVE_DIR": str(fed)},
            } | {
                f"gateway-deadline@{runtime}": deep_queue_gateway(args.model, server) | slo
                for runtime, server in zip(others, others_behind, strict=True)
            }
            urls = {"torchserve-direct": direct_server.inference_url}
            for target, env in gateways.items():
                progress(f"starting {target} ...")
                process, urls[target] = start_gateway(env, workdir / f"{target}.log")
                processes.append(process)
            urls = {t: urls[t] for t in targets}
            rows = asyncio.run(sweep(urls, args, pool, direct_server))
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
            for server in servers:
                server.stop()
    progress("gateway alone over a null backend ...")
    null = null_gateway_efficiency(args.null_seconds)
    capacity = {t: target_capacity(rows, t, args.slo_ms) for t in targets}
    per_runtime = served_per_runtime(rows, args.runtimes, capacity)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    png_path = args.out.with_suffix(".png") if args.out else RESULTS_DIR / f"capacity-{stamp}.png"
    png = plot(rows, targets, args.slo_ms, png_path)
    columns = [
        ("target", "target"),
        ("offered img/s", "offered"),
        ("achieved img/s", "img_per_s"),
        ("p50 ms", "p50_ms"),
        ("p90 ms", "p90_ms"),
        ("p99 ms", "p99_ms"),
        ("503", "refused_503"),
        ("errors", "errors"),
        ("late", "late"),
        ("within SLO img/s", "goodput_img_per_s"),
        ("generator lag p99 ms", "generator_lag_p99_ms"),
    ]
    print(columns_table(columns, rows))
    print(f"\ncapacity at p99 <= {args.slo_ms:g} ms and < {ERROR_BUDGET:.1%} errors (img/s):")
    for target, value in capacity.items():
        print(f"  {target}: {value if value is not None else 'below the lowest rate'}")
    print("\nserved by each runtime (gateway-deadline in front of TorchServe):")
    for runtime, served in per_runtime.items():
        print(f"  {runtime}: {served}")
    print(f"\ncold start: {cold}")
    print(f"gateway over a null backend: {null}")
    payload = {
        "benchmark": "capacity",
        "environment": environment("cpu") | {"cpus_usable": len(os.sched_getaffinity(0))},
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "results": rows,
        "capacity_at_slo": capacity,
        "served_per_runtime": per_runtime,
        "cold_start": cold,
        "null_backend_gateway": null,
        "plot": str(png),
    }
    path = write_results("capacity", payload, args.out or png_path.with_suffix(".json"))
    print(f"\nJSON: {path}\nPNG: {png}")
    return payload


if __name__ == "__main__":
    main()

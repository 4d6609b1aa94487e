"""Gateway benchmark: gateway+TorchServe vs TorchServe direct vs the model in-process.

    python -m bench.gateway                                  # eca_resnet50, 1/8/32 clients
    python -m bench.gateway --model se_resnet50 --concurrency 4,16 --duration 30

Every client sends one image per request. "torchserve-direct" relies on TorchServe's own
batching (batchSize 8, maxBatchDelay 10 ms); "gateway+torchserve" batches in the gateway and
sends one TorchServe request per batch to a TorchServe of its own (batchSize 1: one batching
layer); "gateway-inprocess" runs the same handler code inside the
gateway process. The three alternate in short slices (A, B, C, A, B, C ...) so the machine's drift
hits them alike; ratios are to torchserve-direct at the same concurrency, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from model_store.torchserve.launcher import TorchServe
from perf.common import comma_list, progress, report
from perf.images import image_pool
from perf.load import LoadResult, closed_loop
from perf.stack import (
    bench_archives,
    build,
    gateway_env,
    post_direct,
    start_gateway,
    start_torchserve,
)
from service.settings import GatewaySettings

TARGETS = ("torchserve-direct", "gateway+torchserve", "gateway-inprocess")


def make_sender(
    client: httpx.AsyncClient,
    target: str,
    url: str,
    model: str,
    pool: list[bytes],
    direct: TorchServe,
) -> Callable[[int], Any]:
    async def send(n: int) -> int:
        data = pool[n % len(pool)]
        if target == "torchserve-direct":
            response = await post_direct(client, direct, f"/predictions/{model}", content=data)
        else:
            response = await client.post(
                f"{url}/v1/models/{model}/classify",
                content=data,
                headers={"Content-Type": "image/jpeg"},
            )
        return 1 if response.status_code == 200 else 0

    return send


def merge(results: list[LoadResult]) -> LoadResult:
    merged = LoadResult(results[0].concurrency, sum(r.elapsed_s for r in results))
    for r in results:
        merged.latencies_s += r.latencies_s
        merged.images += r.images
        merged.errors += r.errors
    return merged


async def measure(
    urls: dict[str, str], args: argparse.Namespace, pool: list[bytes], direct: TorchServe
) -> list[dict[str, Any]]:
    rows = []
    limits = httpx.Limits(max_connections=max(args.concurrency) + 8)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        for concurrency in args.concurrency:
            slices: dict[str, list[LoadResult]] = {t: [] for t in urls}
            for index in range(args.slices):
                for target, url in urls.items():
                    progress(f"{concurrency} clients, slice {index + 1}/{args.slices}: {target}")
                    send = make_sender(client, target, url, args.model, pool, direct)
                    slices[target].append(
                        await closed_loop(
                            send, concurrency, args.duration / args.slices, args.warmup
                        )
                    )
            for target, parts in slices.items():
                rows.append({"target": target, "model": args.model, **merge(parts).summary()})
            base = next(
                r
                for r in rows
                if r["target"] == "torchserve-direct" and r["concurrency"] == concurrency
            )
            for row in rows[-len(urls) :]:
                row["throughput_vs_direct"] = (
                    row["img_per_s"] / base["img_per_s"] if base["img_per_s"] else None
                )
                row["p99_vs_direct"] = row["p99_ms"] / base["p99_ms"] if base["p99_ms"] else None
                progress(
                    f"    {row['target']}: {row['img_per_s']:.1f} img/s, p99 {row['p99_ms']:.0f} ms"
                )
    return rows


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="eca_resnet50")
    parser.add_argument("--concurrency", type=comma_list(int), default="1,8,32")
    parser.add_argument(
        "--duration", type=float, default=30.0, help="measured seconds per target and concurrency"
    )
    parser.add_argument(
        "--slices", type=int, default=3, help="alternations of the targets per concurrency"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="unmeasured seconds at the start of each slice"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=GatewaySettings.model_fields["max_batch_size"].default,
        help="the gateway's",
    )
    parser.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=GatewaySettings.model_fields["max_batch_delay_ms"].default,
        help="the gateway's",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny trained model (smoke runs)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    pool = image_pool()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        workdir = Path(tmp)
        fed = build(args.model, bench_archives("gateway-fed", args.tiny))
        direct = build(args.model, bench_archives("direct", args.tiny), batch_size=8)
        server = start_torchserve([args.model], direct, workdir / "direct")
        behind = start_torchserve([args.model], fed, workdir / "gateway-fed")
        try:
            common = {
                "GATEWAY_MODELS": args.model,
                "GATEWAY_MAX_BATCH_SIZE": str(args.max_batch_size),
                "GATEWAY_MAX_BATCH_DELAY_MS": str(args.max_batch_delay_ms),
                "GATEWAY_QUEUE_LIMIT": str(max(64, 4 * max(args.concurrency))),
            }
            progress("starting gateway (torchserve backend) and gateway (inprocess backend) ...")
            gw_ts, gw_ts_url = start_gateway(
                gateway_env(behind, [args.model]) | common, workdir / "gateway-ts.log"
            )
            processes.append(gw_ts)
            gw_ip, gw_ip_url = start_gateway(
                common
                | {
                    "GATEWAY_BACKEND": "inprocess",
                    "GATEWAY_ARCHIVE_DIR": str(fed),
                },
                workdir / "gateway-inprocess.log",
            )
            processes.append(gw_ip)
            urls = dict(zip(TARGETS, (server.inference_url, gw_ts_url, gw_ip_url), strict=True))
            rows = asyncio.run(measure(urls, args, pool, server))
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)
            server.stop()
            behind.stop()
    columns = [
        ("target", "target"),
        ("clients", "concurrency"),
        ("requests", "requests"),
        ("errors", "errors"),
        ("img/s", "img_per_s"),
        ("vs direct", "throughput_vs_direct"),
        ("p50 ms", "p50_ms"),
        ("p99 ms", "p99_ms"),
        ("p99 vs direct", "p99_vs_direct"),
    ]
    return report("gateway", args, rows, columns)


if __name__ == "__main__":
    main()

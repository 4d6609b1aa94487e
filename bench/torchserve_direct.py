"""TorchServe-direct benchmark: img/s and p50/p99 per model and load, through TorchServe alone.

    python -m bench.torchserve_direct               # se_resnet50, eca_resnet50; 1/4/8 clients
    python -m bench.torchserve_direct --models all --concurrency 1,8,16 --duration 30
    python -m bench.torchserve_direct --images-per-request 8  # a request per batch, as the gateway

Starts its own TorchServe on free loopback ports with freshly built archives (full-size models,
seeded random weights, compiled unless --no-compile), so it measures exactly what
`make serve` runs. Single-image requests exercise TorchServe's own batching (batchSize,
maxBatchDelay); this is the baseline the gateway has to beat.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from model_store.worker.archive import ArchiveSpec
from perf.common import comma_list, progress, report
from perf.images import image_pool
from perf.load import closed_loop
from perf.stack import start_stack


async def run_load(
    server: Any, model: str, pool: list[bytes], args: argparse.Namespace, concurrency: int
) -> dict[str, Any]:
    import httpx

    from contract.protocol import input_field
    from perf.stack import post_direct

    path = f"/predictions/{model}"
    per_request = args.images_per_request
    limits = httpx.Limits(
        max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4
    )
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def send(n: int) -> int:
            if per_request == 1:
                response = await post_direct(client, server, path, content=pool[n % len(pool)])
            else:
                files = [
                    (input_field("image", i), ("x.jpg", pool[(n + i) % len(pool)], "image/jpeg"))
                    for i in range(per_request)
                ]
                response = await post_direct(client, server, path, files=files)
            if response.status_code != 200:
                return 0
            return sum("predictions" in r for r in response.json()["results"])

        result = await closed_loop(send, concurrency, args.duration, warmup_s=args.warmup)
    return {"model": model, "images_per_request": per_request, **result.summary()}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from model_store.zoo.registry import DEFAULT_MODELS, parse_model_names

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        type=parse_model_names,
        default=",".join(DEFAULT_MODELS),
        help="comma list or 'all'",
    )
    parser.add_argument(
        "--concurrency", type=comma_list(int), default="1,4,8", help="concurrent clients"
    )
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per point")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="unmeasured seconds before each point"
    )
    parser.add_argument("--images-per-request", type=int, default=1)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch-size", type=int, default=8, help="TorchServe batchSize")
    parser.add_argument("--max-batch-delay-ms", type=int, default=ArchiveSpec.max_batch_delay_ms)
    parser.add_argument("--tiny", action="store_true", help="tiny trained models (smoke runs)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    pool = image_pool()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-torchserve-") as tmp:
        started = time.perf_counter()
        with start_stack(
            args.models,
            Path(tmp),
            tiny=args.tiny,
            compile=args.compile,
            batch_size=args.batch_size,
            max_batch_delay_ms=args.max_batch_delay_ms,
            gateway=False,
        ) as stack:
            server = stack.torchserve
            progress(f"TorchServe ready after {time.perf_counter() - started:.0f} s")
            for model in args.models:
                for concurrency in args.concurrency:
                    progress(f"{model}: {concurrency} clients for {args.duration:.0f} s ...")
                    row = asyncio.run(run_load(server, model, pool, args, concurrency))
                    progress(
                        f"    {row['img_per_s']:.1f} img/s, "
                        f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms"
                    )
                    rows.append(row)
    columns = [
        ("model", "model"),
        ("images/request", "images_per_request"),
        ("clients", "concurrency"),
        ("requests", "requests"),
        ("errors", "errors"),
        ("img/s", "img_per_s"),
        ("p50 ms", "p50_ms"),
        ("p90 ms", "p90_ms"),
        ("p99 ms", "p99_ms"),
    ]
    return report("torchserve", args, rows, columns)


if __name__ == "__main__":
    main()

"""Compare attention variants under the same Locust load and write a report.

    python -m loadtests.compare --url http://127.0.0.1:8000 --users 8 --duration 60
    python -m loadtests.compare --start-stack --models all --users 1,4,8 --p99-target-ms 3000

For each model, one at a time, against the same running stack: an uncounted warm-up, then
Locust headless with the same users, spawn rate and duration. Locust's CSVs give req/s and
latency percentiles; the gateway's /metrics, scraped before and after, give images, batch sizes,
queue wait and backend time, and prove no request was lost or counted twice. Output:
``loadtests/reports/<timestamp>/report.md``, PNG plots and the raw CSVs.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bench.common import columns_table
from model_store.registry import parse_model_names

HERE = Path(__file__).parent
REPORTS = HERE / "reports"


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def scrape(url: str, model: str) -> dict[str, float]:
    """The gateway's per-model counters and histogram sums, by sample name (and code), summed
    over the other labels (protocol)."""
    values: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            key = sample.name + (
                f"{{code={sample.labels['code']}}}" if "code" in sample.labels else ""
            )
            if "le" not in sample.labels:
                values[key] = values.get(key, 0.0) + sample.value
    return values


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def run_locust(
    url: str, model: str, users: int, spawn_rate: float, seconds: float, csv_prefix: Path | None
) -> None:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(HERE / "locustfile.py"),
        "--headless",
        "--only-summary",
        "--host",
        url,
        "--model",
        model,
        "-u",
        str(users),
        "-r",
        str(spawn_rate),
        "-t",
        f"{max(1, round(seconds))}s",
        "--stop-timeout",
        "30",
        "--exit-code-on-error",
        "0",
        "--loglevel",
        "WARNING",
    ]
    if csv_prefix is not None:
        command += ["--csv", str(csv_prefix), "--json-file", str(csv_prefix)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"locust failed for {model}:\n{proc.stderr[-3000:]}")


def final_stats(prefix: Path, seconds: float) -> dict[str, float]:
    """Locust's final numbers, from its JSON file (``--json-file``).

    Not from ``_stats.csv``: Locust writes that file's last row before the requests still in
    flight at the end have finished (seen here: 30 requests in the CSV, 39 printed and counted
    by the gateway); the JSON is written after them.
    """
    entries = json.loads(Path(f"{prefix}.json").read_text())
    histogram: dict[float, int] = {}
    for entry in entries:
        for ms, count in entry["response_times"].items():
            histogram[float(ms)] = histogram.get(float(ms), 0) + count
    requests = sum(e["num_requests"] for e in entries)

    def percentile(q: float) -> float:
        seen, rank = 0, q * requests
        for ms in sorted(histogram):
            seen += histogram[ms]
            if seen >= rank:
                return ms
        return float("nan")

    return {
        "requests": requests,
        "failures": sum(e["num_failures"] for e in entries),
        "req_per_s": requests / seconds,
        "p50_ms": percentile(0.50),
        "p95_ms": percentile(0.95),
        "p99_ms": percentile(0.99),
    }


def measure(
    url: str, model: str, users: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    progress(f"{model}, {users} users: warm-up {args.warmup:.0f} s (not counted)")
    if args.warmup > 0:
        run_locust(url, model, users, args.spawn_rate, args.warmup, None)
    before = scrape(url, model)
    prefix = out / f"{model}-u{users}"
    progress(f"{model}, {users} users: measuring {args.duration:.0f} s")
    started = time.perf_counter()
    run_locust(url, model, users, args.spawn_rate, args.duration, prefix)
    elapsed = time.perf_counter() - started
    after = scrape(url, model)
    stats = final_stats(prefix, args.duration)
    gateway_requests = sum(
        v - before.get(k, 0.0) for k, v in after.items() if k.startswith("gateway_requests_total{")
    )
    batches = delta(after, before, "gateway_batch_size_count")
    row = {
        "model": model,
        "params": describe_params(model),
        "users": users,
        **stats,
        "error_pct": 100 * stats["failures"] / max(stats["requests"], 1),
        "img_per_s": delta(after, before, "gateway_images_total") / args.duration,
        "gateway_requests": gateway_requests,
        "gateway_200": delta(after, before, "gateway_requests_total{code=200}"),
        "gateway_images": delta(after, before, "gateway_images_total"),
        "mean_batch_size": delta(after, before, "gateway_batch_size_sum") / batches
        if batches
        else None,
        "mean_queue_wait_ms": 1000
        * delta(after, before, "gateway_queue_wait_seconds_sum")
        / max(delta(after, before, "gateway_queue_wait_seconds_count"), 1),
        "mean_backend_ms": 1000
        * delta(after, before, "gateway_backend_duration_seconds_sum")
        / batches
        if batches
        else None,
        "wall_s": elapsed,
    }
    progress(
        f"    {row['req_per_s']:.1f} req/s, p50 {row['p50_ms']:.0f} ms, "
        f"p99 {row['p99_ms']:.0f} ms, errors {row['error_pct']:.1f}%, "
        f"mean batch {row['mean_batch_size'] or 0:.1f}"
    )
    return row


def describe_params(model: str) -> int:
    import torch

    from model_store import count_parameters, create_model

    with torch.device("meta"):
        return count_parameters(create_model(model))[0]


def write_report(rows: list[dict[str, Any]], args: argparse.Namespace, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = rows[0]["model"]
    base = {r["users"]: r["req_per_s"] for r in rows if r["model"] == first}
    for row in rows:
        row["ratio_to_first"] = (
            row["req_per_s"] / base[row["users"]] if base.get(row["users"]) else None
        )
    (out / "results.json").write_text(
        json.dumps({"config": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2)
    )

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    for model in models:
        points = [(r["users"], r["img_per_s"]) for r in rows if r["model"] == model]
        ax.plot(*zip(*points, strict=True), marker="o", label=model)
    ax.set(xlabel="concurrent users", ylabel="images / s", title="Throughput vs users")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=120)

    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(r["users"] for r in rows)
    at_top = [r for r in rows if r["users"] == top]
    width = 0.8 / len(at_top)
    for i, row in enumerate(at_top):
        xs = [j + i * width for j in range(3)]
        ax.bar(xs, [row["p50_ms"], row["p95_ms"], row["p99_ms"]], width, label=row["model"])
    ax.set_xticks([j + width * (len(at_top) - 1) / 2 for j in range(3)], ["p50", "p95", "p99"])
    ax.set(ylabel="latency (ms)", title=f"Latency percentiles at {top} users")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close("all")

    main_columns = [
        ("model", "model"),
        ("params", "params"),
        ("users", "users"),
        ("req/s", "req_per_s"),
        ("img/s", "img_per_s"),
        ("p50 ms", "p50_ms"),
        ("p95 ms", "p95_ms"),
        ("p99 ms", "p99_ms"),
        ("error %", "error_pct"),
        ("mean batch", "mean_batch_size"),
        ("queue ms", "mean_queue_wait_ms"),
        ("backend ms", "mean_backend_ms"),
        (f"vs {first}", "ratio_to_first"),
    ]
    accounting = [
        ("model", "model"),
        ("users", "users"),
        ("Locust requests", "requests"),
        ("gateway requests", "gateway_requests"),
        ("gateway 200s", "gateway_200"),
        ("gateway images", "gateway_images"),
    ]
    lines = [
        f"# Attention variants under load: {', '.join(models)}",
        "",
        f"Same stack ({args.url}), same load per model: {', '.join(map(str, args.users))} users, "
        f"spawn rate {args.spawn_rate}/s, {args.duration:.0f} s measured after a "
        f"{args.warmup:.0f} s warm-up; one image per request.",
        "",
        columns_table(main_columns, [r | {"params": f"{r['params']:,}"} for r in rows]),
    ]
    if args.p99_target_ms:
        lines += ["", f"## Throughput at p99 <= {args.p99_target_ms:.0f} ms", ""]
        for model in models:
            within = [r for r in rows if r["model"] == model and r["p99_ms"] <= args.p99_target_ms]
            best = max(
                (r for r in within if r["error_pct"] == 0),
                key=lambda r: r["img_per_s"],
                default=None,
            )
            if best is None:
                lines.append(f"- {model}: target not met at any tested user count")
            else:
                lines.append(
                    f"- {model}: {best['img_per_s']:.2f} img/s at {best['users']} users "
                    f"(p99 {best['p99_ms']:.0f} ms)"
                )
    lines += [
        "",
        "## Accounting (Locust vs the gateway's own counters)",
        "",
        columns_table(accounting, rows),
    ]
    lines += [
        "",
        "![throughput](throughput.png)",
        "",
        "![latency](latency.png)",
        "",
        "Locust's final stats: `<model>-u<users>.json`; its CSVs "
        "(`_stats.csv`, `_stats_history.csv`, `_failures.csv`) are kept as raw history.",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


@contextmanager
def started_stack(models: list[str], tiny: bool) -> Iterator[str]:
    """TorchServe and the gateway on free loopback ports, for --start-stack."""
    from bench.stack import start_gateway
    from bench.torchserve import start_torchserve
    from model_store.contract import GATEWAY_FED_BATCH_SIZE

    with tempfile.TemporaryDirectory(prefix="loadtest-stack-") as tmp:
        workdir = Path(tmp)
        options = argparse.Namespace(
            models=models,
            compile=True,
            batch_size=GATEWAY_FED_BATCH_SIZE,
            max_batch_delay_ms=10,
            tiny=tiny,
        )
        server = start_torchserve(options, workdir)
        gateway = None
        try:
            gateway, url = start_gateway(
                {
                    "GATEWAY_MODELS": ",".join(models),
                    "GATEWAY_TORCHSERVE_INFERENCE_URL": server.inference_url,
                    "GATEWAY_TORCHSERVE_MANAGEMENT_URL": server.management_url,
                    "GATEWAY_TORCHSERVE_KEY_FILE": str(server.key_file),
                },
                workdir / "gateway.log",
            )
            yield url
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(30)
            server.stop()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        type=parse_model_names,
        default="se_resnet50,eca_resnet50",
        help="comma list or 'all'",
    )
    parser.add_argument("--users", default="8", help="concurrent users; a comma list sweeps them")
    parser.add_argument("--spawn-rate", type=float, default=8.0)
    parser.add_argument(
        "--duration", type=float, default=60.0, help="measured seconds per model and user count"
    )
    parser.add_argument(
        "--warmup", type=float, default=10.0, help="uncounted seconds before each measurement"
    )
    parser.add_argument(
        "--p99-target-ms", type=float, help="report each model's best throughput within this p99"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", default="http://127.0.0.1:8000", help="a running gateway")
    target.add_argument(
        "--start-stack", action="store_true", help="start TorchServe + gateway here"
    )
    parser.add_argument("--allow-remote", action="store_true", help="permit a non-loopback --url")
    parser.add_argument(
        "--tiny", action="store_true", help="with --start-stack: tiny trained models"
    )
    parser.add_argument(
        "--out", type=Path, help="report folder (default loadtests/reports/<timestamp>)"
    )
    args = parser.parse_args(argv)
    args.users = [int(u) for u in args.users.split(",")]
    if not args.start_stack and not is_loopback(args.url) and not args.allow_remote:
        parser.error(
            f"refusing to load {args.url}: not a loopback address "
            "(pass --allow-remote if you mean it)"
        )
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    out = args.out or REPORTS / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    with started_stack(args.models, args.tiny) if args.start_stack else _given(args.url) as url:
        args.url = url
        rows = [
            measure(url, model, users, args, out) for users in args.users for model in args.models
        ]
    report = write_report(rows, args, out)
    print(report.read_text())
    print(f"report: {report}")
    return report


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()

"""What a user is served, end to end, against what the model alone could do on the same cores.

    python -m bench.e2e                              # the default `make serve` stack, ~1 h
    python -m bench.e2e --pools small --rates 0.6,0.8,1.0 --duration 10     # a quick look
    python -m bench.e2e --option split=OMP_NUM_THREADS=1 --option shared=   # options side by side

The stack is what ``make serve`` starts (archives as ``python -m model_store build`` makes
them, TorchServe by the same launcher, the gateway with its default settings), serving
``--models`` (``make serve``'s two by default) and, for comparison, ``--model`` alone. Each
``--option NAME=VAR=VALUE,...`` starts the two-model stack again with those variables: worker
ones (``OMP_NUM_THREADS``, ``WORKER_CPU_SLOTS``, ``OMP_WAIT_POLICY``...) and gateway settings
(``GATEWAY_MAX_CONCURRENT_BATCHES``...); empty: the defaults.

For each stack and upload pool (``small``: web-sized JPEGs; ``camera``: 0.3-12 MP photos):

- **raw**: the archive's own classifier in a process of its own on the same CPUs (the stack
  idle): decode + model for batches of 8 back to back (img/s), and at batch 1 the decode and
  the model's time per image: what no serving layer can beat. Measured again right before each
  phase that is compared with it (these shared machines drift by 30% within an hour).
- **light load**: one request at a time, and where its time went: the client's latency, the
  gateway's parts (``read``, ``validate``, ``queue``), TorchServe's frontend and transport (the
  backend round trip less the worker's call), the worker's parts (``wait`` for the CPUs,
  ``decode``, ``model``) and the rest (the gateway answering, the client's own HTTP), from the
  answers' ``timing``. Goal: latency <= the model's batch-1 time + decode + 15 ms.
- **capacity**: Poisson arrivals at ``--rates`` (fractions of the raw img/s), all models at
  once sharing the rate; capacity at p99 <= ``--slo-ms`` (``perf.slo``). Goal: >= 75% of raw.
- **at 70% of capacity**: the same breakdown under load.

The load generator is this process, on the same two CPUs: its CPU time is measured for every
phase and reported beside the results (the share of one CPU it used), with each server
process's CPU per image (gateway, TorchServe's Java frontend, the workers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from model_store.torchserve.readiness import FRONTEND_WARMUP_REQUESTS
from perf.common import (
    REPO_ROOT,
    comma_list,
    markdown_table,
    percentile,
    progress,
    report,
)
from perf.images import CAMERA_UPLOADS, PHOTO_UPLOADS, SMALL_UPLOADS, image_pool, media_type
from perf.load import open_loop, summarize
from perf.slo import capacity_at_slo, rate_point
from perf.stack import BENCH_DIR, build, gateway_env, start_gateway, start_torchserve

POOLS = {"small": (SMALL_UPLOADS, 85), "camera": (CAMERA_UPLOADS + PHOTO_UPLOADS, 90)}
PARTS = ("read", "validate", "queue", "frontend", "wait", "decode", "model", "handler", "rest")
"""Where a request's time goes, in the order it goes there (``breakdown``); they add up to
the client's latency."""


def pool(name: str) -> tuple[bytes, ...]:
    sizes, quality = POOLS[name]
    return image_pool(2 * len(sizes), sizes, quality=quality)


def breakdown(client_ms: float, timing: dict[str, Any]) -> dict[str, float]:
    """One answered request's time in ``PARTS`` (ms), from its client latency and the answer's
    ``timing``: ``frontend`` is the backend round trip less the worker's own call (TorchServe's
    Java frontend, its socket to the worker, the HTTP between gateway and TorchServe),
    ``handler`` the worker's call less its parts (parsing TorchServe's request, answering), and
    ``rest`` what the client saw beyond the gateway's parts and the backend (the gateway's
    routing and answer, the client's side of HTTP)."""
    worker = timing.get("worker") or {}
    in_worker = worker.get("total_ms", 0.0)
    parts = {
        "client": client_ms,
        "read": timing["read_ms"],
        "validate": timing["validate_ms"],
        "queue": timing["queue_ms"],
        "frontend": timing["backend_ms"] - in_worker,
        "wait": worker.get("wait_ms", 0.0),
        "decode": worker.get("decode_ms", 0.0),
        "model": worker.get("model_ms", 0.0),
    }
    parts["handler"] = in_worker - parts["wait"] - parts["decode"] - parts["model"]
    parts["rest"] = client_ms - sum(parts[p] for p in PARTS[:-1])
    parts["batch"] = max(timing["batch_sizes"])
    return parts


def summarize_parts(samples: Sequence[dict[str, float]]) -> dict[str, float]:
    """Median of every part, the client's p99, and where the slowest 1% of requests spent their
    time (the mean of each part over them: what makes the tail)."""
    keys = [key for key in samples[0] if key != "batch"]
    summary = {f"{k}_ms": statistics.median(s[k] for s in samples) for k in keys}
    tail = sorted(samples, key=lambda s: s["client"])[-max(1, len(samples) // 100) :]
    summary |= {f"tail_{k}_ms": statistics.fmean(s[k] for s in tail) for k in keys}
    summary["batch_mean"] = statistics.fmean(s["batch"] for s in samples)
    summary["tail_batch_mean"] = statistics.fmean(s["batch"] for s in tail)
    summary["client_p99_ms"] = percentile([s["client"] for s in samples], 99)
    summary["requests"] = len(samples)
    return summary


class CpuMeter:
    """CPU seconds of this process (the load generator) and of the server processes."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        import psutil

        self.processes = {
            role: [psutil.Process(pid) for pid in group] for role, group in pids.items()
        }

    def sample(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        seconds = {"generator": usage.ru_utime + usage.ru_stime}
        for role, processes in self.processes.items():
            seconds[role] = sum(sum(p.cpu_times()[:2]) for p in processes if p.is_running())
        return seconds

    @contextmanager
    def measure(self, into: dict[str, Any], images: list[int]):
        """CPU per role over the block: the generator's share of one CPU, and each server
        role's CPU ms per answered image (``images``: a one-item list filled in the block)."""
        before, started = self.sample(), time.perf_counter()
        yield
        after, elapsed = self.sample(), time.perf_counter() - started
        used = {role: after[role] - before[role] for role in after}
        into["generator_cpu_share"] = used.pop("generator") / elapsed
        for role, seconds in used.items():
            into[f"{role}_cpu_ms_per_image"] = seconds * 1000 / max(1, images[0])


def _server_pids(gateway: subprocess.Popen[bytes], torchserve: Any) -> dict[str, list[int]]:
    import psutil

    frontend, workers = [], []
    for child in psutil.Process(torchserve.process.pid).children(recursive=True):
        name = " ".join(child.cmdline())
        if "java" in child.name():
            frontend.append(child.pid)
        elif "model_service_worker" in name:
            workers.append(child.pid)
    return {"gateway": [gateway.pid], "frontend": frontend, "workers": workers}


async def _classify(
    client: httpx.AsyncClient, url: str, model: str, data: bytes
) -> tuple[int, float, dict[str, Any] | None]:
    started = time.perf_counter()
    response = await client.post(
        f"{url}/v1/models/{model}/classify",
        content=data,
        headers={"Content-Type": media_type(data)},
    )
    elapsed = (time.perf_counter() - started) * 1000
    timing = response.json().get("timing") if response.status_code == 200 else None
    return response.status_code, elapsed, timing


async def light_load(url: str, model: str, images: Sequence[bytes], repeats: int) -> list[dict]:
    """One request at a time: each image ``repeats`` times, after one untimed pass."""
    samples = []
    async with httpx.AsyncClient(timeout=60) as client:
        for data in images:
            await _classify(client, url, model, data)
        for _ in range(repeats):
            for data in images:
                status, client_ms, timing = await _classify(client, url, model, data)
                if status == 200 and timing is not None:
                    samples.append(breakdown(client_ms, timing))
    return samples


async def open_loop_run(
    url: str, models: Sequence[str], images: Sequence[bytes], rate: float, duration_s: float
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """Poisson arrivals at ``rate`` img/s shared by ``models`` (each upload to the next model
    in turn); the summary (``perf.load.summarize``) and each answer's breakdown."""
    samples: list[dict[str, float]] = []
    turn = iter(range(10**9))
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def send(data: bytes) -> int:
            model = models[next(turn) % len(models)]
            status, client_ms, timing = await _classify(client, url, model, data)
            if status == 200 and timing is not None:
                samples.append(breakdown(client_ms, timing))
            return status

        outcomes, lags, elapsed = await open_loop(send, list(images), rate, duration_s, seed=7)
    return summarize(outcomes, lags, elapsed, 1.0), samples


def raw_capacity(archive: Path, pool_name: str, seconds: float) -> dict[str, float]:
    """In this process: the archive's classifier, batches of 8 back to back for ``seconds``,
    then each image alone (its decode and model time)."""
    from model_store.worker.archive import load_archive
    from model_store.worker.classifier import ImageClassifier
    from model_store.worker.timing import Stopwatch

    images = pool(pool_name)
    classifier = ImageClassifier.load(load_archive(archive, Path(tempfile.mkdtemp())))
    batches = [list(images[i : i + 8]) for i in range(0, len(images) - 7, 8)] or [list(images)]
    classifier.classify(batches[0])
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        batch = batches[done % len(batches)]
        classifier.classify(batch)
        done += len(batch)
    singles = []
    for _ in range(3):
        for data in images:
            stopwatch = Stopwatch()
            classifier.classify([data], stopwatch=stopwatch)
            singles.append(stopwatch.timing())
    return {
        "img_per_s": done / elapsed,
        "decode_ms_b1": statistics.median(t["decode_ms"] for t in singles),
        "model_ms_b1": statistics.median(t["model_ms"] for t in singles),
        "threads": classifier.decode_threads,
    }


def _raw_in_child(archive: Path, pool_name: str, seconds: float) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.e2e", "--raw", f"{archive}:{pool_name}:{seconds}"]
    done = subprocess.run(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def sweep(
    url: str, traffic: Sequence[str], images: Sequence[bytes], raw_rate: float, args: Any
) -> list[dict[str, Any]]:
    """Open loop at each of ``args.rates`` x ``raw_rate``, stopping far past the knee."""
    rows = []
    for fraction in args.rates:
        rate = fraction * raw_rate
        progress(f"  {rate:.1f} img/s ({fraction:.0%} of raw) for {args.duration:g} s")
        summary, _ = asyncio.run(open_loop_run(url, traffic, images, rate, args.duration))
        rows.append(summary | {"offered": rate, "fraction_of_raw": fraction})
        progress(
            f"    p99 {summary['p99_ms']:.0f} ms, 503 {summary['refused_503']:.1%}, "
            f"errors {summary['errors']:.1%}"
        )
        if summary["p99_ms"] > 3 * args.slo_ms:
            break
    return rows


def measure_stack(
    name: str,
    served: Sequence[str],
    traffic: dict[str, Sequence[str]],
    archives: Path,
    env: dict[str, str],
    args: argparse.Namespace,
    archive: Path,
) -> list[dict[str, Any]]:
    """One stack (TorchServe serving ``served``, a gateway in front; ``env``'s ``GATEWAY_*``
    variables for the gateway, the others for TorchServe's workers), for
    every pool: light load to ``args.model``; per ``traffic`` pattern (a name: the models that
    share the offered rate) the capacity sweep and a run at 70% of capacity; before each, the
    raw numbers of ``archive`` on the same CPUs, the stack idle."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        gateway_settings = {k: v for k, v in env.items() if k.startswith("GATEWAY_")}
        server = start_torchserve(
            list(served),
            archives,
            Path(tmp) / "run",
            worker_env={k: v for k, v in env.items() if k not in gateway_settings},
            frontend_warmup=FRONTEND_WARMUP_REQUESTS,  # as make serve does
        )
        gateway = None
        try:
            gateway, url = start_gateway(
                gateway_env(server, served) | gateway_settings, Path(tmp) / "gateway.log"
            )
            meter = CpuMeter(_server_pids(gateway, server))
            for pool_name in args.pools:
                images = pool(pool_name)
                where = {"stack": name, "pool": pool_name}
                raw = _raw_in_child(archive, pool_name, args.raw_seconds)
                progress(f"{name}, {pool_name} uploads: one request at a time (raw {raw}) ...")
                light = asyncio.run(light_load(url, args.model, images, args.repeats))
                rows.append(where | {"load": "light", "parts": summarize_parts(light), "raw": raw})
                for pattern, models in traffic.items():
                    raw = _raw_in_child(archive, pool_name, args.raw_seconds)
                    progress(f"{name}, {pool_name} uploads, traffic to {pattern} (raw {raw}):")
                    rates = sweep(url, models, images, raw["img_per_s"], args)
                    capacity = capacity_at_slo((rate_point(r) for r in rates), args.slo_ms)
                    row = where | {"load": f"70%, {pattern}", "sweep": rates, "raw": raw}
                    row["capacity_img_per_s"] = capacity
                    if capacity:
                        progress(f"  at 70% of capacity ({0.7 * capacity:.1f} img/s) ...")
                        answered, cpu = [0], {}
                        with meter.measure(cpu, answered):
                            summary, samples = asyncio.run(
                                open_loop_run(url, models, images, 0.7 * capacity, args.duration)
                            )
                            answered[0] = len(samples)
                        row |= {"parts": summarize_parts(samples), "at_70": summary, "cpu": cpu}
                    rows.append(row)
        finally:
            if gateway is not None:
                gateway.terminate()
                gateway.wait(30)
            server.stop()
    return rows


def parse_option(text: str) -> tuple[str, dict[str, str]]:
    """``NAME=VAR=VALUE,VAR=VALUE`` (or ``NAME=``: the defaults)."""
    name, _, assignments = text.partition("=")
    env = dict(pair.split("=", 1) for pair in assignments.split(",") if pair)
    return name, env


def table(rows: list[dict[str, Any]]) -> str:
    """Per stack, pool and load: the client's latency, its parts (medians, ms), the light-load
    budget and the capacity at the SLO against the raw img/s."""
    headers = ["stack", "pool", "load", "client p50", "client p99", *PARTS, "batch", "budget",
               "capacity"]  # fmt: skip
    lines = []
    for row in rows:
        parts = row.get("parts")
        base = row["raw"]
        capacity = row.get("capacity_img_per_s")
        lines.append(
            [
                row["stack"],
                row["pool"],
                row["load"],
                *((parts["client_ms"], parts["client_p99_ms"]) if parts else (None, None)),
                *((parts[f"{p}_ms"] for p in PARTS) if parts else [None] * len(PARTS)),
                parts["batch_mean"] if parts else None,
                base["model_ms_b1"] + base["decode_ms_b1"] + 15 if row["load"] == "light" else None,
                f"{capacity:.1f} ({capacity / base['img_per_s']:.0%} of raw)" if capacity else None,
            ]
        )
    return markdown_table(headers, lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=comma_list(), default="se_resnet50,eca_resnet50")
    parser.add_argument("--model", default="eca_resnet50", help="light load and alone")
    parser.add_argument("--pools", type=comma_list(), default="small,camera")
    parser.add_argument(
        "--rates",
        type=comma_list(float),
        default="0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.95,1.0",
        help="offered load, as fractions of the raw img/s",
    )
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    parser.add_argument("--repeats", type=int, default=3, help="light load: passes per image")
    parser.add_argument("--raw-seconds", type=float, default=20.0)
    parser.add_argument("--slo-ms", type=float, default=1000.0)
    parser.add_argument(
        "--option",
        action="append",
        type=parse_option,
        help="NAME=VAR=VALUE,...: the two-model stack again with these worker variables "
        "(default: one option, the defaults)",
    )
    parser.add_argument("--no-alone", action="store_true", help="skip --model served alone")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--raw", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw:
        archive, pool_name, seconds = args.raw.rsplit(":", 2)
        print(json.dumps(raw_capacity(Path(archive), pool_name, float(seconds))))
        return {}

    archives = BENCH_DIR / "full" / "e2e"
    for model in dict.fromkeys([*args.models, args.model]):
        build(model, archives)  # what `python -m model_store build` makes: the same spec
    archive = archives / f"{args.model}.mar"
    traffic = {"all models": args.models, args.model: [args.model]}
    rows = []
    for name, env in args.option or [("default", {})]:
        rows += measure_stack(name, args.models, traffic, archives, env, args, archive)
    if not args.no_alone:
        alone = {args.model: [args.model]}
        rows += measure_stack(
            f"{args.model} alone", [args.model], alone, archives, {}, args, archive
        )
    return report("e2e", args, rows, table(rows))


if __name__ == "__main__":
    main()

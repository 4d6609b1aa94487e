"""One measured trial: Locust headless against a running gateway (one process, or a master with
local or remote workers), the gateway's own counters scraped around it, and the reasons, if
any, the trial cannot be trusted.

The load generator runs niced, and its CPU time (every Locust process) is measured, so a report
can say how much of the machine the load itself took.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import httpx
from prometheus_client.parser import text_string_to_metric_families

from model_store.torchserve.host import free_ports

from .checks import ARRIVAL

HERE = Path(__file__).parent
LOCUSTFILE = HERE / "locustfile.py"
LATE_MS = 100.0
"""An arrival sent later than this after its scheduled time counts as late."""
SHORTFALL_SIGMAS = 3.0
"""The generator failed to hold an offered rate when it sent fewer arrivals than the Poisson
count expected, by more than this many standard deviations (sqrt of the expected count)."""


@dataclass(frozen=True)
class Load:
    """A load level: ``closed`` (``value`` users, each sending as soon as answered) or ``open``
    (``value`` requests/s offered as Poisson arrivals, whatever the answers do)."""

    mode: Literal["closed", "open"]
    value: float

    @property
    def label(self) -> str:
        return f"{self.value:g} users" if self.mode == "closed" else f"{self.value:g} req/s"

    def users(self, user_seconds: float) -> int:
        """Open loop: enough users that each is idle most of the time (a user whose previous
        request is still in flight sends its next arrival late)."""
        if self.mode == "closed":
            return int(self.value)
        return max(4, math.ceil(self.value * user_seconds))

    def user_rate(self, users: int) -> float:
        return self.value / users if self.mode == "open" else 0.0


@dataclass(frozen=True)
class Generator:
    """Where the load comes from: one Locust process (``workers`` 0), a master with ``workers``
    local worker processes, or a master that waits for ``expect_workers`` remote ones."""

    workers: int = 0
    expect_workers: int = 0
    master_bind_host: str = "127.0.0.1"
    master_port: int = 5557
    spawn_rate: float = 50.0
    user_seconds: float = 10.0
    nice: int = 10

    @property
    def distributed(self) -> bool:
        return bool(self.workers or self.expect_workers)


def run_locust(
    url: str, model: str, load: Load, seconds: float, generator: Generator, prefix: Path | None
) -> float:
    """One headless Locust run; the CPU seconds its processes used."""
    users = load.users(generator.user_seconds)
    common = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", "WARNING",
        "--model", model, "--user-rate", f"{load.user_rate(users):.9g}", "--stop-timeout", "30",
    ]  # fmt: skip
    command = [
        *common, "--headless", "--only-summary", "--host", url, "-u", str(users),
        "-r", str(max(generator.spawn_rate, users)), "-t", f"{max(1, round(seconds))}s",
        "--exit-code-on-error", "0",
    ]  # fmt: skip
    if prefix is not None:
        command += ["--csv", str(prefix), "--json-file", str(prefix)]
    port = generator.master_port
    if generator.workers:
        port = free_ports(1)[0]
    if generator.distributed:
        command += [
            "--master", "--expect-workers", str(generator.workers + generator.expect_workers),
            "--expect-workers-max-wait", "120", "--master-bind-host", generator.master_bind_host,
            "--master-bind-port", str(port),
        ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = [
        subprocess.Popen(
            [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            cwd=HERE.parent,
            preexec_fn=partial(os.nice, generator.nice),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(generator.workers)
    ]
    master = subprocess.run(
        command,
        capture_output=True,
        text=True,
        cwd=HERE.parent,
        preexec_fn=partial(os.nice, generator.nice),
    )
    for worker in workers:
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    if master.returncode != 0:
        raise RuntimeError(f"locust failed for {model} at {load.label}:\n{master.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def scrape(url: str, model: str) -> dict[str, float]:
    """The gateway's series for ``model`` by name and their other labels (``code``, ``le``,
    ``runtime``), summed over ``protocol``."""
    values: dict[str, float] = {}
    text = httpx.get(f"{url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            labels = ",".join(
                f"{k}={v}"
                for k, v in sorted(sample.labels.items())
                if k not in ("model", "protocol")
            )
            key = f"{sample.name}{{{labels}}}" if labels else sample.name
            values[key] = values.get(key, 0.0) + sample.value
    return values


def delta(after: dict[str, float], before: dict[str, float], key: str) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def locust_results(prefix: Path, seconds: float) -> dict[str, Any]:
    """Requests and arrivals from Locust's final JSON (``--json-file``: written after the
    requests still in flight at the end have finished, unlike the last row of its CSV)."""
    entries = json.loads(Path(f"{prefix}.json").read_text())
    requests = [e for e in entries if e["method"] != ARRIVAL]
    arrivals = [e for e in entries if e["method"] == ARRIVAL]
    count = sum(e["num_requests"] for e in requests)
    row = {
        "requests": count,
        "failures": sum(e["num_failures"] for e in requests),
        "req_per_s": count / seconds,
        **{f"p{q}_ms": _percentile(requests, q / 100) for q in (50, 95, 99)},
    }
    if arrivals:
        arrived = sum(e["num_requests"] for e in arrivals)
        late = sum(
            n for e in arrivals for ms, n in e["response_times"].items() if float(ms) > LATE_MS
        )
        row |= {
            "arrivals_per_s": arrived / seconds,
            "late_arrival_pct": 100 * late / arrived if arrived else 0.0,
            "p99_lateness_ms": _percentile(arrivals, 0.99),
        }
    return row


def _percentile(entries: list[dict[str, Any]], q: float) -> float:
    """From Locust's response-time histograms (rounded as Locust rounds them)."""
    histogram: dict[float, int] = {}
    for entry in entries:
        for ms, count in entry["response_times"].items():
            histogram[float(ms)] = histogram.get(float(ms), 0) + count
    total = sum(histogram.values())
    seen = 0
    for ms in sorted(histogram):
        seen += histogram[ms]
        if seen >= q * total:
            return ms
    return float("nan")


def trial(
    url: str,
    model: str,
    load: Load,
    generator: Generator,
    seconds: float,
    warmup_s: float,
    prefix: Path,
) -> dict[str, Any]:
    """Warm-up at the same load (not counted), then the measured run; the row says what Locust
    and the gateway counted, and why the trial is invalid if it is."""
    if warmup_s > 0:
        run_locust(url, model, load, warmup_s, generator, None)
    before = scrape(url, model)
    started = time.perf_counter()
    cpu_s = run_locust(url, model, load, seconds, generator, prefix)
    wall_s = time.perf_counter() - started
    after = scrape(url, model)
    row: dict[str, Any] = {
        "model": model,
        "mode": load.mode,
        "load": load.value,
        "users": load.users(generator.user_seconds),
        **locust_results(prefix, seconds),
        "img_per_s": delta(after, before, "gateway_images_total") / seconds,
        "gateway_requests": sum(
            delta(after, before, key) for key in after if key.startswith("gateway_requests_total")
        ),
        "gateway_200": delta(after, before, "gateway_requests_total{code=200}"),
        "batch_sizes": {
            key.split("le=")[1].rstrip("}"): delta(after, before, key)
            for key in after
            if key.startswith("gateway_batch_size_bucket")
        },
        "generator_cpu_s": cpu_s,
        "generator_cpu_pct": 100 * cpu_s / (wall_s * (os.cpu_count() or 1)),
    }
    row["error_pct"] = 100 * row["failures"] / max(row["requests"], 1)
    row["invalid"] = invalid_because(before, after, row, load, seconds)
    return row


def invalid_because(
    before: dict[str, float],
    after: dict[str, float],
    row: dict[str, Any],
    load: Load,
    seconds: float,
) -> list[str]:
    """Why this trial's numbers cannot stand for the model's steady state (empty: they can)."""
    reasons = []
    compiled = delta(after, before, "gateway_worker_compiled_graphs")
    if compiled:
        reasons.append(f"the worker compiled {compiled:.0f} graph(s) while measured")
    runtimes = {k for k, v in after.items() if k.startswith("gateway_model_runtime") and v}
    if runtimes != {k for k, v in before.items() if k.startswith("gateway_model_runtime") and v}:
        reasons.append(f"the worker's runtime changed to {sorted(runtimes)}")
    if row["gateway_requests"] != row["requests"]:
        reasons.append(
            f"Locust counted {row['requests']} requests, the gateway {row['gateway_requests']:.0f}"
        )
    if load.mode == "open":
        expected = load.value * seconds
        arrived = row.get("arrivals_per_s", 0.0)  # none recorded: the generator never started
        if arrived * seconds < expected - SHORTFALL_SIGMAS * math.sqrt(expected):
            reasons.append(f"the generator sent {arrived:.1f} of {load.value:g} req/s offered")
    return reasons

"""What a soak recorded, and what it shows: every request accounted for, recovery per fault,
per-minute series, growth per hour after warm-up; printed as tables, written as JSON and PNG."""

from __future__ import annotations

import argparse
import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from perf.common import markdown_table, percentile, write_results

NOT_SENT = -1
"""An arrival the load generator dropped (``MAX_IN_FLIGHT`` already waiting): never sent."""
HONEST_FAULT_STATUSES = (503, 504)
"""What a request caught in a fault may honestly get: unavailable, or its deadline passed."""


@dataclass
class Outcome:
    sent_at: float
    """Seconds from the soak's start."""
    latency_s: float
    model: str
    kind: str
    """``labelled`` (honest traffic) or the hostile upload's kind."""
    status: int
    """0: no HTTP answer came back; ``NOT_SENT``: dropped by the load generator."""
    right: bool = False
    """Labelled: a 200 with the right label; hostile: the status it must get."""
    code: str | None = None
    """The gateway's error code of a labelled request's refusal (which 503 it was)."""

    @property
    def answered_at(self) -> float:
        return self.sent_at + self.latency_s


@dataclass
class Fault:
    kind: str
    at: float
    models: list[str] = field(default_factory=list)
    """The models it takes down (none for a hostile burst: it must cost nobody an answer)."""
    recovered_s: float | None = None
    """From the fault to its models' first 200 for a request sent after it."""
    non_200: int = 0


@dataclass
class Sample:
    at: float
    gateway: dict[str, float] | None
    workers: dict[str, dict[str, float] | None]
    frontend: dict[str, float] | None
    queue_depth: dict[str, float]


@dataclass
class SoakRun:
    t0: float
    rate: float
    capacity: float | None
    outcomes: list[Outcome] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    key_changes: list[tuple[float, str]] = field(default_factory=list)
    gateway_counts: dict[str, int] = field(default_factory=dict)
    prometheus_total: float | None = None
    elapsed_s: float = 0.0
    restarts: int = 0


def measure_recovery(run: SoakRun) -> None:
    """Each fault's recovery time and the labelled requests it cost (not answered 200)."""
    labelled = [o for o in run.outcomes if o.kind == "labelled" and o.status != NOT_SENT]
    for fault in run.faults:
        if not fault.models:
            continue
        firsts = [
            min(
                (
                    o.answered_at
                    for o in labelled
                    if o.model == m and o.sent_at >= fault.at and o.status == 200
                ),
                default=None,
            )
            for m in fault.models
        ]
        if all(first is not None for first in firsts):
            fault.recovered_s = max(firsts) - fault.at  # type: ignore[type-var]
        end = fault.at + (fault.recovered_s if fault.recovered_s is not None else run.elapsed_s)
        fault.non_200 = sum(
            o.status != 200 and o.model in fault.models and caught(o, fault.at, end)
            for o in labelled
        )


def caught(outcome: Outcome, start: float, end: float) -> bool:
    """Whether a request was in flight at some moment of ``[start, end]``."""
    return outcome.sent_at <= end and outcome.answered_at >= start


def honest(outcome: Outcome, faults: list[Fault], elapsed_s: float) -> bool:
    """A 503/504 to a request caught in a fault of its model while it lasted."""
    return outcome.status in HONEST_FAULT_STATUSES and any(
        outcome.model in f.models
        and caught(
            outcome, f.at, f.at + (f.recovered_s if f.recovered_s is not None else elapsed_s)
        )
        for f in faults
    )


def account(run: SoakRun) -> dict[str, Any]:
    """Every request in one class; ``unaccounted`` must be empty."""
    dropped = sum(o.status == NOT_SENT for o in run.outcomes)
    labelled = [o for o in run.outcomes if o.kind == "labelled" and o.status != NOT_SENT]
    hostile = [o for o in run.outcomes if o.kind != "labelled"]
    unaccounted = [
        o for o in labelled if not o.right and not honest(o, run.faults, run.elapsed_s)
    ] + [o for o in hostile if not o.right]
    client_counts = Counter(f"{o.model}/{o.status}" for o in run.outcomes if o.status > 0)
    return {
        "requests": len(run.outcomes) - dropped,
        "generator_dropped": dropped,
        "labelled": len(labelled),
        "labelled_ok": sum(o.right for o in labelled),
        "wrong_label": sum(o.status == 200 and not o.right for o in labelled),
        "honest_fault_answers": sum(honest(o, run.faults, run.elapsed_s) for o in labelled),
        "hostile": len(hostile),
        "hostile_as_expected": sum(o.right for o in hostile),
        "no_answer": sum(o.status == 0 for o in run.outcomes),
        "unaccounted": [asdict(o) for o in unaccounted],
        "client_counts": dict(sorted(client_counts.items())),
        "gateway_counts": dict(sorted(run.gateway_counts.items())),
        "counters_equal": dict(client_counts) == run.gateway_counts,
        "prometheus_total": run.prometheus_total,
        "prometheus_equal": run.prometheus_total == sum(client_counts.values()),
    }


def per_minute(run: SoakRun) -> list[dict[str, Any]]:
    rows = []
    for minute in range(math.ceil(run.elapsed_s / 60)):
        start, end = minute * 60, (minute + 1) * 60
        arrived = [o for o in run.outcomes if start <= o.answered_at < end]
        done = [o for o in arrived if o.status != NOT_SENT]
        ok = [o.latency_s for o in done if o.kind == "labelled" and o.status == 200]
        samples = [s for s in run.samples if start <= s.at < end]
        last = samples[-1] if samples else None
        row: dict[str, Any] = {
            "minute": minute,
            "requests": len(done),
            "p50_ms": percentile(ok, 50) * 1000 if ok else None,
            "p99_ms": percentile(ok, 99) * 1000 if ok else None,
            "non_200": dict(Counter(str(o.status) for o in done if o.status != 200)),
            "not_sent": len(arrived) - len(done),
            "queue_depth_max": max((sum(s.queue_depth.values()) for s in samples), default=None),
        }
        for name, usage in process_usage(last).items() if last else ():
            for key in ("rss_mb", "fds", "threads"):
                row[f"{name}_{key}"] = usage[key] if usage else None
        rows.append(row)
    return rows


def process_usage(sample: Sample) -> dict[str, dict[str, float] | None]:
    return {"gateway": sample.gateway, "frontend": sample.frontend} | {
        f"worker[{model}]": usage for model, usage in sample.workers.items()
    }


def growth_per_hour(run: SoakRun, warmup_s: float) -> dict[str, dict[str, float | None]]:
    """Least-squares slope per hour of RSS (MB) and fds after warm-up, per process. A worker
    killed by a fault starts a new series (new pid): the longest one counts."""
    series: dict[tuple[str, int], list[tuple[float, dict[str, float]]]] = {}
    for sample in run.samples:
        if sample.at < warmup_s:
            continue
        for name, usage in process_usage(sample).items():
            if usage:
                series.setdefault((name, int(usage["pid"])), []).append((sample.at, usage))
    growth: dict[str, dict[str, float | None]] = {}
    for (name, _), points in sorted(series.items(), key=lambda kv: -len(kv[1])):
        if name in growth or len(points) < 3:
            continue
        hours = [at / 3600 for at, _ in points]
        growth[name] = {
            "span_min": (points[-1][0] - points[0][0]) / 60,
            **{
                f"{key}_per_hour": statistics.linear_regression(hours, [u[key] for _, u in points])[
                    0
                ]
                for key in ("rss_mb", "fds")
            },
            "rss_mb_last": points[-1][1]["rss_mb"],
        }
    return growth


def plot(run: SoakRun, minutes: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    x = [row["minute"] + 0.5 for row in minutes]
    latency, errors, rss, fds = axes.flat
    for key in ("p50_ms", "p99_ms"):
        latency.plot(x, [row[key] for row in minutes], marker="o", label=key)
    latency.set(ylabel="ms", title="labelled requests: latency per minute")
    errors.bar(x, [sum(row["non_200"].values()) for row in minutes], width=0.8)
    errors.set(ylabel="answers", title="non-200 answers per minute (hostile included)")
    names = sorted({n for s in run.samples for n in process_usage(s)})
    for name in names:
        at = [s.at / 60 for s in run.samples if process_usage(s).get(name)]
        used = [process_usage(s)[name] for s in run.samples if process_usage(s).get(name)]
        rss.plot(at, [u["rss_mb"] for u in used], label=name)  # type: ignore[index]
        fds.plot(at, [u["fds"] for u in used], label=name)  # type: ignore[index]
    rss.set(xlabel="minute", ylabel="MB", title="RSS")
    fds.set(xlabel="minute", ylabel="open fds", title="file descriptors")
    for axis in axes.flat:
        for fault in run.faults:
            axis.axvline(fault.at / 60, color="grey", linestyle=":", linewidth=1)
        axis.legend(fontsize=7) if axis.get_legend_handles_labels()[0] else None
    figure.suptitle("soak (dotted lines: faults)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def report(run: SoakRun, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    measure_recovery(run)
    accounting = account(run)
    minutes = per_minute(run)
    growth = growth_per_hour(run, args.warmup_s)
    payload = {
        "benchmark": "soak",
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "offered_req_per_s": run.rate,
        "capacity_req_per_s": run.capacity,
        "elapsed_s": run.elapsed_s,
        "torchserve_restarts": run.restarts,
        "key_changes": run.key_changes,
        "accounting": accounting,
        "faults": [asdict(f) for f in run.faults],
        "growth_per_hour": growth,
        "per_minute": minutes,
        "samples": [asdict(s) for s in run.samples],
    }
    from perf.common import environment

    payload["environment"] = environment("cpu")
    path = write_results("soak", payload, out)
    picture = plot(run, minutes, path.with_suffix(".png"))
    print(summary_table(run, accounting))
    print()
    print(
        markdown_table(
            ["fault", "at s", "models", "recovered after s", "non-200 answers"],
            [[f.kind, f.at, ",".join(f.models), f.recovered_s, f.non_200] for f in run.faults],
        )
    )
    print()
    print(
        markdown_table(
            ["process", "span min", "RSS MB/h", "fds/h", "RSS MB at end"],
            [
                [name, g["span_min"], g["rss_mb_per_hour"], g["fds_per_hour"], g["rss_mb_last"]]
                for name, g in growth.items()
            ],
        )
    )
    print()
    print(minute_table(minutes))
    print(f"\nJSON: {path}\nPNG: {picture}")
    return payload


def summary_table(run: SoakRun, accounting: dict[str, Any]) -> str:
    renewals = Counter(kind for _, kind in run.key_changes)
    rows = [
        ["duration", f"{run.elapsed_s / 60:.1f} min"],
        [
            "offered",
            f"{run.rate:.1f} req/s" + (f" (capacity {run.capacity:.1f})" if run.capacity else ""),
        ],
        ["requests", accounting["requests"]],
        ["labelled: 200 with the right label", accounting["labelled_ok"]],
        ["labelled: honest 503/504 in a fault", accounting["honest_fault_answers"]],
        [
            "hostile: answered as they must be",
            f"{accounting['hostile_as_expected']} of {accounting['hostile']}",
        ],
        ["unaccounted (lost, wrong, unexpected)", len(accounting["unaccounted"])],
        ["not sent (the load generator's own limit)", accounting["generator_dropped"]],
        ["faults", ", ".join(f"{k} x{n}" for k, n in Counter(f.kind for f in run.faults).items())],
        ["key changes seen", ", ".join(f"{k} x{n}" for k, n in renewals.items()) or "none"],
        ["TorchServe restarts by the supervisor", run.restarts],
        ["gateway counters = client's", accounting["counters_equal"]],
        ["Prometheus total = client's", accounting["prometheus_equal"]],
    ]
    return markdown_table(["soak", ""], rows)


def minute_table(minutes: list[dict[str, Any]]) -> str:
    columns = [
        "minute",
        "requests",
        "p50_ms",
        "p99_ms",
        "queue_depth_max",
        "gateway_rss_mb",
        "gateway_fds",
        "gateway_threads",
    ]
    workers = sorted(
        {k for row in minutes for k in row if k.startswith("worker[") and "threads" not in k}
    )
    headers = columns + workers + ["non_200"]
    return markdown_table(
        headers,
        [
            [row.get(c) for c in columns + workers]
            + [" ".join(f"{c}:{n}" for c, n in sorted(row["non_200"].items()))]
            for row in minutes
        ],
    )

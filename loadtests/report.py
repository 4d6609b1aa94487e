"""The comparison report: verdicts with their intervals, capacity at the SLO, per-level tables,
the environment, and plots (p99 against offered load, per-trial throughput, batch sizes).

    python -m loadtests.report loadtests/reports/<run>    # again, from its results.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from perf.common import markdown_table

from .plots import plots
from .stats import Level, Ratio, bootstrap_ratio, level_capacity, level_key, level_label, verdict

NO_VALID_OPEN_LOOP = "no valid open-loop trials"
METRICS = (("img_per_s", "throughput (img/s)", True), ("p99_ms", "p99 latency (ms)", False))
"""What is compared per load level: key, name, whether higher is better."""


def paired(rows: list[dict[str, Any]], models: list[str], key: str) -> tuple[list[float], ...]:
    """Per model, the metric of each trial index where every model's trial is valid."""
    by_trial: dict[int, dict[str, float]] = {}
    for row in rows:
        if not row["invalid"]:
            by_trial.setdefault(row["trial"], {})[row["model"]] = row[key]
    complete = [t for t in sorted(by_trial) if len(by_trial[t]) == len(models)]
    return tuple([by_trial[t][model] for t in complete] for model in models)


def verdicts(rows: list[dict[str, Any]], models: list[str]) -> list[dict[str, Any]]:
    """For each load level and metric: ``models[1] / models[0]`` with its interval."""
    baseline, candidate = models[:2]
    out = []
    for level in dict.fromkeys(level_key(r) for r in rows):
        at_level = [r for r in rows if level_key(r) == level]
        for key, name, higher_is_better in METRICS:
            base, cand = paired(at_level, [baseline, candidate], key)
            if not base:
                continue
            ratio = bootstrap_ratio(base, cand)
            out.append(
                {
                    "level": level_label(*level),
                    "metric": name,
                    baseline: statistics.fmean(base),
                    candidate: statistics.fmean(cand),
                    "ratio": ratio,
                    "verdict": verdict(ratio, candidate, baseline, higher_is_better),
                }
            )
    return out


def capacities(
    rows: list[dict[str, Any]], models: list[str], slo_ms: float
) -> dict[str, float | str | None]:
    result = {}
    for model in models:
        levels = []
        for mode, load in dict.fromkeys(level_key(r) for r in rows):
            valid = [
                r
                for r in rows
                if r["model"] == model and level_key(r) == (mode, load) and not r["invalid"]
            ]
            if mode == "open" and valid:
                levels.append(
                    Level(
                        load,
                        [r["p99_ms"] for r in valid],
                        sum(r["requests"] for r in valid),
                        sum(r["failures"] for r in valid),
                    )
                )
        result[model] = level_capacity(levels, slo_ms) if levels else NO_VALID_OPEN_LOOP
    return result


def summary_rows(rows: list[dict[str, Any]], models: list[str]) -> list[list[Any]]:
    """Per level and model: medians over the valid trials."""
    table = []
    for level in dict.fromkeys(level_key(r) for r in rows):
        for model in models:
            trials = [r for r in rows if level_key(r) == level and r["model"] == model]
            valid = [r for r in trials if not r["invalid"]]

            def median(key: str, valid: list[dict[str, Any]] = valid) -> float | None:
                values = [r[key] for r in valid if r.get(key) is not None]
                return statistics.median(values) if values else None

            table.append(
                [
                    level_label(*level),
                    model,
                    f"{len(valid)}/{len(trials)}",
                    median("img_per_s"),
                    median("p50_ms"),
                    median("p99_ms"),
                    median("error_pct"),
                    median("late_arrival_pct"),
                    median("generator_cpu_pct"),
                ]
            )
    return table


def capacity_text(capacity: float | str | None) -> str:
    if isinstance(capacity, str):
        return capacity
    return f"{capacity:g} req/s offered" if capacity is not None else "not met at any rate tested"


def interval(ratio: Ratio) -> str:
    return f"{ratio.value:.3f} [{ratio.low:.3f}, {ratio.high:.3f}]"


def write_report(
    rows: list[dict[str, Any]],
    models: list[str],
    config: dict[str, Any],
    environment: dict[str, Any],
    out: Path,
) -> Path:
    baseline, candidate = models[:2]
    found = verdicts(rows, models)
    capacity = capacities(rows, models, config["slo_ms"])
    (out / "results.json").write_text(
        json.dumps(
            {
                "config": config,
                "environment": environment,
                "verdicts": [v | {"ratio": vars(v["ratio"])} for v in found],
                "capacity_at_slo": capacity,
                "trials": rows,
            },
            indent=2,
        )
        + "\n"
    )
    images = plots(rows, models, out)
    invalid = [r for r in rows if r["invalid"]]
    lines = [
        f"# {candidate} vs {baseline} under load",
        "",
        f"{config['trials']} trials per model and load level, interleaved "
        f"({baseline} {candidate}, {candidate} {baseline}, ...), each after its own "
        f"{config['warmup']:g} s warm-up and measured for {config['duration']:g} s, on one "
        f"running stack ({config['url']}). Ratios are {candidate} / {baseline} of the trial "
        "means, with a 95% bootstrap interval over the paired trials; a verdict names a winner "
        "only when its interval excludes 1. Invalid trials (below) are left out.",
        "",
        "## Verdicts",
        "",
        markdown_table(
            [
                "load",
                "metric",
                baseline,
                candidate,
                f"{candidate} / {baseline} [95% CI]",
                "verdict",
            ],
            [
                [
                    v["level"],
                    v["metric"],
                    v[baseline],
                    v[candidate],
                    interval(v["ratio"]),
                    v["verdict"],
                ]
                for v in found
            ],
        ),
        "",
        f"## Capacity at p99 <= {config['slo_ms']:g} ms (open loop, < 0.1% errors)",
        "",
        *[f"- {model}: " + capacity_text(c) for model, c in capacity.items()],
        "",
        "## Per load level (medians over the valid trials)",
        "",
        markdown_table(
            [
                "load",
                "model",
                "valid trials",
                "img/s",
                "p50 ms",
                "p99 ms",
                "error %",
                "late arrivals %",
                "load generator CPU %",
            ],
            summary_rows(rows, models),
        ),
        "",
        "Late arrivals: open-loop arrivals sent more than 100 ms after their scheduled time (the "
        "generator's users were all busy). Load generator CPU: every Locust process, niced, as a "
        f"share of the machine's {environment.get('cpu_count')} cores.",
        "",
        "## Invalid trials",
        "",
        *(
            [
                f"- {r['model']}, {level_label(r['mode'], r['load'])}, trial {r['trial'] + 1}: "
                + "; ".join(r["invalid"])
                for r in invalid
            ]
            or [
                "none: no worker compiled while measured, the runtimes stayed, and Locust's "
                "and the gateway's counts agree"
            ]
        ),
        "",
        "## Environment",
        "",
        *[f"- {key}: {value}" for key, value in environment.items()],
        *[f"- {key}: {value}" for key, value in config.items()],
        "",
        *[f"![{name}]({name})\n" for name in images],
        "Raw: `results.json` (every trial), Locust's JSON and CSVs per trial.",
    ]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def rerender(out: Path) -> Path:
    """The report again from a run's ``results.json`` (after a change to the report itself)."""
    saved = json.loads((out / "results.json").read_text())
    config = saved["config"]
    return write_report(saved["trials"], config["models"], config, saved["environment"], out)


if __name__ == "__main__":
    import sys

    print(rerender(Path(sys.argv[1])).read_text())

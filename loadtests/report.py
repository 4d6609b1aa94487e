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

from .stats import Level, Ratio, bootstrap_ratio, level_capacity, verdict

NO_VALID_OPEN_LOOP = "no valid open-loop trials"
METRICS = (("img_per_s", "throughput (img/s)", True), ("p99_ms", "p99 latency (ms)", False))
"""What is compared per load level: key, name, whether higher is better."""


def level_key(row: dict[str, Any]) -> tuple[str, float]:
    return row["mode"], row["load"]


def level_label(mode: str, load: float) -> str:
    return f"closed, {load:g} users" if mode == "closed" else f"open, {load:g} req/s"


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


def plots(rows: list[dict[str, Any]], models: list[str], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    open_rows = [r for r in rows if r["mode"] == "open" and not r["invalid"]]
    if open_rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        for model in models:
            mine = [r for r in open_rows if r["model"] == model]
            loads = sorted({r["load"] for r in mine})
            ax.scatter([r["load"] for r in mine], [r["p99_ms"] for r in mine], s=12, alpha=0.5)
            ax.plot(
                loads,
                [statistics.median(r["p99_ms"] for r in mine if r["load"] == x) for x in loads],
                marker="o",
                label=f"{model} (median of trials)",
            )
        ax.set(xlabel="offered load (req/s)", ylabel="p99 latency (ms)", yscale="log")
        ax.set_title("p99 against offered load (open loop): the knee is the capacity")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "p99_vs_offered.png", dpi=120)
        names.append("p99_vs_offered.png")

    levels = list(dict.fromkeys(level_key(r) for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(levels)), 4))
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        for j, level in enumerate(levels):
            values = [
                r["img_per_s"]
                for r in rows
                if level_key(r) == level and r["model"] == model and not r["invalid"]
            ]
            x = j + (i - (len(models) - 1) / 2) * width
            ax.scatter(
                [x] * len(values), values, s=14, color=f"C{i}", label=model if j == 0 else None
            )
            if values:
                ax.hlines(statistics.fmean(values), x - width / 3, x + width / 3, color=f"C{i}")
    ax.set_xticks(range(len(levels)), [level_label(*lv) for lv in levels], rotation=20, ha="right")
    ax.set(ylabel="images / s", title="Throughput of each trial (line: mean)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput_trials.png", dpi=120)
    names.append("throughput_trials.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, model in enumerate(models):
        counts = batch_size_counts([r for r in rows if r["model"] == model])
        total = sum(counts.values()) or 1
        sizes = sorted(counts)
        ax.bar(
            [s + (i - (len(models) - 1) / 2) * 0.35 for s in sizes],
            [counts[s] / total for s in sizes],
            0.35,
            label=model,
        )
    ax.set(
        xlabel="images per backend batch (histogram bucket, up to)",
        ylabel="share of batches",
        title="Batch sizes (all trials)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "batch_sizes.png", dpi=120)
    plt.close("all")
    names.append("batch_sizes.png")
    return names


def batch_size_counts(rows: list[dict[str, Any]]) -> dict[float, float]:
    """Batches per histogram bucket (the gateway's cumulative ``le`` buckets, differenced)."""
    cumulative: dict[float, float] = {}
    for row in rows:
        for le, count in row["batch_sizes"].items():
            if le != "+Inf":
                cumulative[float(le)] = cumulative.get(float(le), 0.0) + count
    counts, below = {}, 0.0
    for le in sorted(cumulative):
        if cumulative[le] - below > 0:
            counts[le] = cumulative[le] - below
        below = cumulative[le]
    return counts


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

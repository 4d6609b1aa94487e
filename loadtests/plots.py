"""The load-test report's figures: p99 against offered load (the knee), each trial's
throughput, and the batch sizes the gateway formed."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from .stats import level_key, level_label


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

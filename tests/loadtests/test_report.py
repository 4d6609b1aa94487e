"""The report's bookkeeping on rows made here: pairs with an invalid trial are left out of the
verdict, capacity needs valid open-loop trials, batch sizes come from cumulative buckets."""

from __future__ import annotations

from loadtests.plots import batch_size_counts
from loadtests.report import (
    NO_VALID_OPEN_LOOP,
    capacities,
    paired,
    rerender,
    verdicts,
    write_report,
)

MODELS = ["se", "eca"]


def row(model: str, trial: int, img_per_s: float, p99_ms: float, **extra) -> dict:
    return {
        "model": model,
        "trial": trial,
        "mode": "open",
        "load": 10.0,
        "img_per_s": img_per_s,
        "p99_ms": p99_ms,
        "requests": 200,
        "failures": 0,
        "invalid": [],
    } | extra


def test_a_pair_with_an_invalid_trial_is_left_out():
    rows = [
        row("se", 0, 10, 500),
        row("eca", 0, 11, 400),
        row("se", 1, 10, 500, invalid=["the worker compiled 1 graph(s) while measured"]),
        row("eca", 1, 99, 1),
        row("se", 2, 10, 520),
        row("eca", 2, 11, 410),
    ]
    assert paired(rows, MODELS, "img_per_s") == ([10, 10], [11, 11])
    found = {v["metric"]: v for v in verdicts(rows, MODELS)}
    assert found["throughput (img/s)"]["ratio"].value == 1.1
    assert found["throughput (img/s)"]["verdict"] == "eca faster"
    assert found["p99 latency (ms)"]["verdict"] == "eca faster"  # lower p99 in every pair


def test_capacity_needs_valid_open_loop_trials():
    rows = [row("se", 0, 10, 500), row("eca", 0, 10, 500, invalid=["short"])]
    assert capacities(rows, MODELS, 1000) == {"se": 10.0, "eca": NO_VALID_OPEN_LOOP}
    assert capacities(rows, MODELS, 100)["se"] is None


def test_batch_sizes_from_cumulative_buckets():
    trials = [
        {"batch_sizes": {"1.0": 5.0, "2.0": 5.0, "4.0": 9.0, "8.0": 10.0, "+Inf": 10.0}},
        {"batch_sizes": {"1.0": 1.0, "2.0": 3.0, "4.0": 3.0, "8.0": 3.0, "+Inf": 3.0}},
    ]
    assert batch_size_counts(trials) == {1.0: 6.0, 2.0: 2.0, 4.0: 4.0, 8.0: 1.0}


def test_a_report_renders_again_from_its_results(tmp_path):
    rows = [
        row(model, trial, 10 + (model == "eca"), 500, batch_sizes={"1.0": 3.0, "+Inf": 3.0})
        for trial in range(3)
        for model in MODELS
    ]
    config = {"models": MODELS, "trials": 3, "warmup": 5, "duration": 20, "url": "u"}
    config |= {"slo_ms": 1000.0}
    first = write_report(rows, MODELS, config, {"cpu_count": 2}, tmp_path).read_text()
    (tmp_path / "report.md").unlink()
    assert rerender(tmp_path).read_text() == first
    assert "| open, 10 req/s | throughput (img/s) |" in first and "eca faster" in first

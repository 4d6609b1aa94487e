"""The capacity benchmark: its statistics, and a smoke run of the whole sweep on tiny models."""

from __future__ import annotations

import json

import pytest

from bench.capacity import main
from bench.capacity_targets import TARGETS
from perf.load import summarize
from perf.slo import target_capacity


def test_summary_counts_refusals_errors_and_late_answers_apart():
    outcomes = [(200, 0.1)] * 6 + [(200, 2.0), (503, 0.01), (504, 30.0), (0, 0.5)]
    row = summarize(outcomes, lags=[0.001, 0.002], elapsed=2.0, slo_s=1.0)
    assert row["requests"] == 10
    assert row["img_per_s"] == 3.5  # 7 answered in 2 s
    assert row["refused_503"] == 0.1 and row["errors"] == 0.2 and row["late"] == 0.1
    assert row["goodput_img_per_s"] == 3.0  # the 6 answered within the SLO
    assert row["p50_ms"] == pytest.approx(100) and row["p99_ms"] == pytest.approx(2000)


def test_capacity_is_the_last_rate_within_the_slo_and_the_error_budget_before_the_knee():
    rows = [
        {"target": "t", "offered": 4, "p99_ms": 300, "refused_503": 0, "errors": 0},
        {"target": "t", "offered": 8, "p99_ms": 900, "refused_503": 0, "errors": 0},
        {"target": "t", "offered": 12, "p99_ms": 800, "refused_503": 0.05, "errors": 0},
        {"target": "t", "offered": 16, "p99_ms": 4000, "refused_503": 0, "errors": 0},
    ]
    assert target_capacity(rows, "t", 1000) == 8
    assert target_capacity(rows, "t", 100) is None
    rows.append({"target": "t", "offered": 20, "p99_ms": 500, "refused_503": 0, "errors": 0})
    assert target_capacity(rows, "t", 1000) == 8  # a lucky rate past the knee does not count


@pytest.mark.slow
def test_a_tiny_sweep_measures_every_target(tmp_path):
    out = tmp_path / "capacity.json"
    main(["--tiny", "--rates", "15", "--duration", "2", "--pause", "0", "--null-seconds", "2",
          "--runtimes", "inductor,openvino", "--out", str(out)])  # fmt: skip
    record = json.loads(out.read_text())
    targets = [*TARGETS, "gateway-deadline@openvino"]
    assert [row["target"] for row in record["results"]] == targets
    assert all(row["requests"] > 0 and row["img_per_s"] > 0 for row in record["results"])
    assert set(record["capacity_at_slo"]) == set(targets)
    served = record["served_per_runtime"]
    assert set(served) == {"inductor", "openvino"}
    assert all(s["max_achieved_img_per_s"] > 0 for s in served.values())
    assert set(record["cold_start"]["torchserve_ready_s_per_runtime"]) == {"inductor", "openvino"}
    assert [c["bucket"] for c in record["cold_start"]["first_calls"]] == [1, 2, 4, 8]
    assert record["cold_start"]["torchserve_ready_s"] > 0
    assert record["cold_start"]["crash_to_ready_s"] > 0
    assert record["null_backend_gateway"]["img_per_cpu_second"] > 0
    assert out.with_suffix(".png").stat().st_size > 0

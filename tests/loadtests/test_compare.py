"""A short comparison run against the suite's real stack: the report's numbers must agree with
Locust's final stats and with the gateway's own counters (no request lost or counted twice)."""

from __future__ import annotations

import json

import pytest

from loadtests.checks import shape_problem
from loadtests.compare import main as compare
from loadtests.compare import parse_args

pytestmark = pytest.mark.slow


def test_comparison_report_agrees_with_locust_and_gateway(gateway, tmp_path):
    report = compare(
        [
            "--url",
            gateway.url,
            "--models",
            "se_resnet50,eca_resnet50",
            "--users",
            "3",
            "--spawn-rate",
            "3",
            "--duration",
            "4",
            "--warmup",
            "1",
            "--p99-target-ms",
            "60000",
            "--out",
            str(tmp_path),
        ]
    )
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["se_resnet50", "eca_resnet50"]
    for row in rows:
        final = json.loads((tmp_path / f"{row['model']}-u3.json").read_text())
        assert row["requests"] == sum(e["num_requests"] for e in final) > 0
        assert (tmp_path / f"{row['model']}-u3_stats_history.csv").exists()
        assert row["failures"] == sum(e["num_failures"] for e in final) == 0
        assert (
            row["gateway_requests"] == row["requests"]
        )  # every Locust request reached the gateway once
        assert row["gateway_200"] == row["requests"] and row["gateway_images"] == row["requests"]
        assert row["mean_batch_size"] >= 1
    text = report.read_text()
    assert (
        "| se_resnet50 | 28,088,024 | 3 |" in text and "| eca_resnet50 | 25,557,118 | 3 |" in text
    )
    assert "Throughput at p99" in text
    for png in ("throughput.png", "latency.png"):
        assert (tmp_path / png).stat().st_size > 5000


def test_refuses_non_loopback_targets():
    with pytest.raises(SystemExit):
        parse_args(["--url", "http://gpu-box.example:8000"])
    assert parse_args(["--url", "http://gpu-box.example:8000", "--allow-remote"]).url.startswith(
        "http://gpu-box"
    )
    assert parse_args(["--url", "http://localhost:8000"]).users == [8]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (
            {
                "model": "m",
                "results": [{"predictions": [{"index": 1, "label": "a", "score": 0.9}]}],
            },
            None,
        ),
        ({"model": "x", "results": []}, "answer for model"),
        ({"model": "m", "results": []}, "0 results"),
        (
            {
                "model": "m",
                "results": [
                    {
                        "predictions": [
                            {"index": 1, "label": "a", "score": 0.1},
                            {"index": 2, "label": "b", "score": 0.9},
                        ]
                    }
                ],
            },
            "not sorted",
        ),
    ],
)
def test_locust_shape_check(body, problem):
    found = shape_problem(body, "m", 5)
    assert (found is None) if problem is None else (problem in found)

"""The scale-out benchmark, small: its gateway finds every worker double, spreads the batches
over them, and its counts add up."""

from __future__ import annotations

import json

import pytest

from bench.scaleout import main

pytestmark = pytest.mark.slow


def test_the_gateway_spreads_batches_over_every_replica(tmp_path):
    out = tmp_path / "scaleout.json"
    results = main(["--replicas", "1,3", "--duration", "2", "--load", "0.5", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == results["results"]
    one, three = results["results"]
    assert (one["replicas"], three["replicas"]) == (1, 3)
    assert one["endpoints_ready"] == 1 and three["endpoints_ready"] == 3
    for row in (one, three):
        assert row["requests"] > 10 and row["errors"] == 0 and row["refused_503"] == 0
        assert row["img_per_s"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["gateway_cpu_ms_per_image"] > 0
    assert three["share_min"] > 0.15  # every replica computed a fair part
    assert results["workers_one_gateway_feeds"] >= 1

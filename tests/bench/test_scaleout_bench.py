"""The scale-out benchmark, small: real TorchServes pinned to CPUs and worker doubles, each
reached through the gateway's discovery and through a Service-like address; its counts add
up."""

from __future__ import annotations

import json

import pytest

from bench.scaleout import main

pytestmark = pytest.mark.slow


def test_replicas_found_by_the_gateway_share_the_batches(tmp_path, tiny_archives):
    out = tmp_path / "scaleout.json"
    results = main(
        [
            *("--real", "2", "--archives", str(tiny_archives), "--start-rate", "8"),
            *("--real-duration", "3", "--max-steps", "2"),
            *("--replicas", "1,3", "--duration", "2", "--load", "0.5", "--out", str(out)),
        ]
    )
    assert json.loads(out.read_text())["doubles"] == results["doubles"]

    real = {row["target"]: row for row in results["real"]["rows"]}
    assert set(real) == {"discovery-2", "service-2"}
    assert real["discovery-2"]["replicas_used"] == 2  # each TorchServe counted requests
    # both computed a part; not half each: the gateway and this test share the replicas'
    # cores, and the replica slowed more gets less (least outstanding work)
    assert real["discovery-2"]["share_min"] > 0.05
    for row in results["real"]["rows"]:
        assert row["requests"] > 10 and row["errors"] == 0
        assert 0 < row["p50_ms"] <= row["p99_ms"]
    capacity = {(c["replicas"], c["mode"]): c for c in results["real"]["capacity"]}
    assert set(capacity) == {(2, "discovery"), (2, "service")}
    assert capacity[2, "discovery"]["capacity_img_per_s"] >= 8  # the first rate passed

    doubles = {row["target"]: row for row in results["doubles"]["rows"]}
    assert set(doubles) == {"discovery-1", "service-1", "discovery-3", "service-3"}
    for row in doubles.values():
        assert row["requests"] > 10 and row["errors"] == 0 and row["refused_503"] == 0
        assert row["img_per_s"] > 0 and row["gateway_cpu_ms_per_image"] > 0
    assert doubles["discovery-3"]["replicas_used"] == 3
    assert doubles["discovery-3"]["share_min"] > 0.15  # every replica computed a fair part
    assert 1 <= doubles["service-3"]["replicas_used"] <= 3  # where its connections landed
    assert results["doubles"]["workers_one_gateway_core_feeds"] >= 1

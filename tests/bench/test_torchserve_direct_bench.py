"""The TorchServe load runner, against the suite's real TorchServe: its counts must agree with
TorchServe's own request counter (nothing lost, nothing counted twice)."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from bench.torchserve_direct import run_load
from perf.images import image_pool
from tests.model_store.worker.test_handler import inference_count

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("images_per_request", [1, 3])
def test_load_numbers_agree_with_torchserve_metrics(torchserve, images_per_request):
    args = argparse.Namespace(duration=2.0, warmup=0.0, images_per_request=images_per_request)
    before = inference_count(torchserve, "se_resnet50")
    row = asyncio.run(run_load(torchserve, "se_resnet50", image_pool(8), args, concurrency=3))
    assert row["errors"] == 0 and row["requests"] > 3
    assert row["images"] == row["requests"] * images_per_request
    assert inference_count(torchserve, "se_resnet50") - before == row["requests"]
    # rates are counts over one measured interval (speed itself is the benchmark's business)
    assert row["img_per_s"] == pytest.approx(row["req_per_s"] * images_per_request)
    assert row["img_per_s"] > 0
    assert 0 < row["p50_ms"] <= row["p99_ms"]

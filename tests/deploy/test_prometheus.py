"""A real Prometheus server (Debian's package) runs the project's scrape config and rules against
the suite's running gateway and TorchServe: the request counter, the latency histogram and the
recording rules must arrive with the gateway's own numbers."""

from __future__ import annotations

import time

import httpx
import pytest

from model_store.demo.synthetic import encode, make_images
from perf.stack import start_prometheus

from ..service.test_gateway_torchserve import metric

pytestmark = pytest.mark.slow


@pytest.fixture
def prometheus(gateway, torchserve, tmp_path):
    targets = {"gateway": gateway.url, "torchserve": torchserve.metrics_url}
    with start_prometheus(targets, tmp_path, scrape_interval_s=1) as url:
        yield url


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for: {what}")


def query(url: str, expr: str) -> float | None:
    result = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()["data"][
        "result"
    ]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_gateway_and_torchserve_and_evaluates_rules(prometheus, gateway):
    images, _ = make_images(6, seed=77)
    files = [("file", (f"{i}", encode(im, "PNG"), "image/png")) for i, im in enumerate(images)]
    for _ in range(4):
        response = httpx.post(
            f"{gateway.url}/v1/models/eca_resnet50/classify", files=files[:3], timeout=60
        )
        assert response.status_code == 200, response.text
    requests = metric(
        gateway.url, "gateway_requests_total", protocol="v1", model="eca_resnet50", code="200"
    )
    images_total = metric(gateway.url, "gateway_images_total", protocol="v1", model="eca_resnet50")
    selector = '{job="gateway",model="eca_resnet50",protocol="v1"'

    wait_for(
        lambda: query(prometheus, f'gateway_requests_total{selector},code="200"}}') == requests,
        "request counter",
    )
    wait_for(
        lambda: (
            query(prometheus, f"gateway_request_duration_seconds_count{selector}}}") is not None
        ),
        "latency histogram",
    )
    buckets = query(prometheus, f"count(gateway_request_duration_seconds_bucket{selector}}})")
    assert buckets is not None and buckets >= 10
    wait_for(
        lambda: (
            query(prometheus, 'model:gateway_images:total{model="eca_resnet50"}') == images_total
        ),
        "recording rule",
    )
    wait_for(
        lambda: (
            query(prometheus, 'model:gateway_request_duration_seconds:p99_1m{model="eca_resnet50"}')
            is not None
        ),
        "p99 rule",
    )
    assert query(prometheus, 'up{job="torchserve"}') == 1
    rules = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {g["name"] for g in rules} == {"gateway-recording", "gateway-alerts"}
    assert all(r["health"] == "ok" for g in rules for r in g["rules"])

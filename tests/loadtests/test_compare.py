"""Short comparisons: interleaved trials whose numbers agree with Locust's final stats and the
gateway's own counters (no request lost or counted twice), verdicts with intervals, the report
and its plots. Locust's distributed mode (two local workers) against the suite's real stack;
one Locust process against a gateway whose se_resnet50 is made six times slower, so the
verdicts are known."""

from __future__ import annotations

import json

import pytest

from loadtests.checks import shape_problem
from loadtests.compare import main as compare
from loadtests.compare import parse_args
from service.settings import GatewaySettings

from ..servers import GatewayThread
from ..service.fakes import FakeBackend

ARGS = ["--models", "se_resnet50,eca_resnet50", "--trials", "2", "--duration", "3"]
ARGS += ["--warmup", "1", "--users", "2", "--rates", "4", "--user-seconds", "3"]
ARGS += ["--generator-nice", "0"]  # a niced generator starves beside the suite's other tests


def run(gateway, tmp_path, *extra: str) -> tuple[str, dict]:
    report = compare(["--url", gateway.url, *ARGS, "--out", str(tmp_path), *extra])
    return report.read_text(), json.loads((tmp_path / "results.json").read_text())


def check_trials(results: dict, tmp_path) -> None:
    """Interleaved (A B, then B A), each trial's numbers agree with Locust's own final file and
    with the gateway's counters, and nothing made a trial invalid on a prebuilt stack."""
    trials = results["trials"]
    assert [(t["mode"], t["trial"], t["model"]) for t in trials] == [
        (mode, index, model)
        for mode in ("closed", "open")
        for index, order in enumerate(
            (["se_resnet50", "eca_resnet50"], ["eca_resnet50", "se_resnet50"])
        )
        for model in order
    ]
    for t in trials:
        final = json.loads(
            (
                tmp_path / f"{t['model']}-{t['mode']}-{t['load']:g}-t{t['trial'] + 1}.json"
            ).read_text()
        )
        requests = [e for e in final if e["method"] != "ARRIVAL"]
        assert t["requests"] == sum(e["num_requests"] for e in requests) > 0
        assert t["failures"] == 0 and t["invalid"] == [], t
        assert t["gateway_requests"] == t["gateway_200"] == t["requests"]
        assert sum(t["batch_sizes"].values()) > 0 and t["generator_cpu_s"] > 0
        if t["mode"] == "open":
            assert t["arrivals_per_s"] > 0 and 0 <= t["late_arrival_pct"] <= 100


@pytest.mark.slow
def test_a_model_six_times_slower_is_found_slower_with_intervals(tmp_path):
    """se_resnet50's batches take 300 ms, eca_resnet50's 50 ms: closed-loop throughput and p99
    at both loads say eca is faster, with intervals that exclude 1. (Open-loop throughput is
    the offered rate for both: no verdict is asserted there.)"""
    models = ["se_resnet50", "eca_resnet50"]
    backend = FakeBackend(models, delay={"se_resnet50": 0.3, "eca_resnet50": 0.05})
    with GatewayThread(GatewaySettings(models=models), backend) as slow_se:
        text, results = run(slow_se, tmp_path)
    check_trials(results, tmp_path)
    verdicts = {(v["level"], v["metric"]): v for v in results["verdicts"]}
    assert set(verdicts) == {
        (level, metric)
        for level in ("closed, 2 users", "open, 4 req/s")
        for metric in ("throughput (img/s)", "p99 latency (ms)")
    }
    for v in verdicts.values():
        ratio = v["ratio"]
        assert ratio["low"] <= ratio["value"] <= ratio["high"] and ratio["pairs"] == 2
    known = [
        ("closed, 2 users", "throughput (img/s)"),
        ("closed, 2 users", "p99 latency (ms)"),
        ("open, 4 req/s", "p99 latency (ms)"),
    ]
    assert [verdicts[k]["verdict"] for k in known] == ["eca_resnet50 faster"] * 3, verdicts
    assert "## Verdicts" in text and "eca_resnet50 / se_resnet50 [95% CI]" in text
    assert "## Capacity at p99 <= 1000 ms" in text and "locust: one process" in text
    for png in ("p99_vs_offered.png", "throughput_trials.png", "batch_sizes.png"):
        assert (tmp_path / png).stat().st_size > 5000


@pytest.mark.slow
def test_locust_distributed_with_two_local_workers(gateway, tmp_path):
    """Locust's own master/worker mode: the master sums both workers' requests and arrivals,
    and they still agree with the gateway's counters."""
    # 6-s trials: the workers report to the master every few seconds, and beside the suite's
    # other tests a 3-s trial sometimes ended before any report arrived (0 requests counted)
    text, results = run(gateway, tmp_path, "--workers", "2", "--duration", "6")
    check_trials(results, tmp_path)
    assert results["config"]["locust"] == "master + 2 local and 0 remote workers"
    assert "locust: master + 2 local and 0 remote workers" in text


def test_refuses_non_loopback_targets_and_needs_two_models_and_trials():
    with pytest.raises(SystemExit):
        parse_args(["--url", "http://gpu-box.example:8000"])
    assert parse_args(["--url", "http://gpu-box.example:8000", "--allow-remote"]).url.startswith(
        "http://gpu-box"
    )
    quick = parse_args(["--url", "http://localhost:8000"])
    assert (quick.users, quick.rates, quick.trials) == ([8], [10.0], 5)
    thorough = parse_args(["--profile", "thorough", "--rates", "3,6"])
    assert thorough.rates == [3.0, 6.0] and thorough.duration == 20
    for bad in (["--models", "eca_resnet50"], ["--trials", "1"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


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

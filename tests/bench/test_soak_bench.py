"""The soak: its accounting rules on made-up outcomes, and a short soak of the real stack (1-minute
keys, a worker killed, TorchServe's frontend killed and restarted) that must account for every
request; timings are reported, never asserted."""

from __future__ import annotations

import json
import os

import pytest

from bench.hostile import HOSTILE
from bench.soak import main
from bench.soak_report import Fault, Outcome, Sample, SoakRun, account, growth_per_hour
from bench.soak_report import measure_recovery as recover


def run_of(outcomes: list[Outcome], faults: list[Fault]) -> SoakRun:
    run = SoakRun(0.0, 1.0, None, outcomes=outcomes, faults=faults, elapsed_s=100.0)
    recover(run)
    return run


def test_a_503_counts_as_honest_only_while_a_fault_of_its_model_lasts():
    outcomes = [
        Outcome(9.0, 0.5, "m", "labelled", 200, right=True),
        Outcome(10.5, 0.1, "m", "labelled", 503),  # caught in the fault
        Outcome(10.5, 0.1, "other", "labelled", 503),  # another model: unaccounted
        Outcome(12.0, 0.2, "m", "labelled", 200, right=True),  # recovered at 12.2
        Outcome(13.0, 0.1, "m", "labelled", 503),  # after recovery: unaccounted
        Outcome(14.0, 0.1, "m", "labelled", 502),  # never honest
        Outcome(15.0, 0.1, "m", "labelled", 200, right=False),  # wrong label
        Outcome(16.0, 0.1, "m", "gif", 415, right=True),
        Outcome(17.0, 0.1, "m", "slow_upload", 0),  # no answer
    ]
    run = run_of(outcomes, [Fault("worker_kill", 10.0, ["m"])])
    assert run.faults[0].recovered_s == pytest.approx(2.2)
    assert run.faults[0].non_200 == 1
    accounting = account(run)
    assert accounting["honest_fault_answers"] == 1
    assert [(o["model"], o["status"]) for o in accounting["unaccounted"]] == [
        ("other", 503), ("m", 503), ("m", 502), ("m", 200), ("m", 0),
    ]  # fmt: skip
    assert accounting["wrong_label"] == 1 and accounting["no_answer"] == 1
    assert not accounting["counters_equal"]  # the gateway reported nothing here


def test_growth_is_fitted_per_process_after_warm_up_on_its_longest_life():
    def sample(at: float, rss: float, worker_pid: int) -> Sample:
        usage = {"pid": 1, "rss_mb": rss, "fds": 10, "threads": 3}
        worker = {"pid": worker_pid, "rss_mb": 100.0, "fds": 20, "threads": 9}
        return Sample(at, usage, {"m": worker}, None, {})

    # warm-up at 1000 MB (not fitted), then 1 MB/h; the worker restarted at 15 min
    samples = [
        sample(t, 1000 if t < 60 else 50 + t / 3600, 2 if t > 900 else 3)
        for t in range(0, 3600, 30)
    ]
    run = SoakRun(0.0, 1.0, None, samples=samples, elapsed_s=3600)
    growth = growth_per_hour(run, warmup_s=60)
    assert growth["gateway"]["rss_mb_per_hour"] == pytest.approx(1.0)
    assert growth["gateway"]["fds_per_hour"] == pytest.approx(0.0)
    assert growth["worker[m]"]["span_min"] > 40  # the pid that lived longest
    assert "frontend" not in growth


@pytest.mark.slow
def test_a_short_soak_accounts_for_every_request(tiny_archives, tmp_path):
    """Also: its short keys are its own TorchServe's, not every later TorchServe's of this
    process (the test suite's session TorchServe once got 1-minute keys from it)."""
    out = tmp_path / "soak.json"
    environment = dict(os.environ)
    main(["--duration-min", "2.75", "--key-minutes", "1", "--rate", "6",
          "--faults", "worker_kill,frontend_kill,hostile_burst", "--fault-every-s", "40",
          "--warmup-s", "15", "--burst-each", "1", "--sample-s", "5", "--out", str(out),
          "--archives", str(tiny_archives), "--workdir", str(tmp_path)])  # fmt: skip
    assert dict(os.environ) == environment
    record = json.loads(out.read_text())
    accounting = record["accounting"]
    assert accounting["unaccounted"] == [], accounting["unaccounted"]
    assert accounting["generator_dropped"] == 0
    assert accounting["counters_equal"], (accounting["client_counts"], accounting["gateway_counts"])
    assert accounting["prometheus_equal"], accounting["prometheus_total"]
    assert accounting["hostile"] == accounting["hostile_as_expected"] == len(HOSTILE)
    kinds = [fault["kind"] for fault in record["faults"]]
    assert kinds[:3] == ["worker_kill", "frontend_kill", "hostile_burst"]
    assert all(f["recovered_s"] is not None for f in record["faults"] if f["models"])
    assert record["torchserve_restarts"] >= 1  # the supervisor brought the frontend back
    assert {kind for _, kind in record["key_changes"]} == {"inference", "management"}
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert len(record["per_minute"]) >= 3

"""The arithmetic behind a verdict, on numbers whose answer is known: intervals over paired
trials, the sentence an interval allows, the capacity at an SLO, and what makes a trial
invalid."""

from __future__ import annotations

import pytest

from loadtests.runner import Load, invalid_because
from loadtests.stats import (
    NO_DIFFERENCE,
    Level,
    bootstrap_ratio,
    level_capacity,
    verdict,
)


def test_a_clear_difference_gets_an_interval_that_excludes_one():
    se = [20.0, 21.0, 19.5, 20.5, 20.2]
    eca = [22.0, 23.1, 21.4, 22.6, 22.1]  # 10% faster in every pair
    ratio = bootstrap_ratio(se, eca)
    assert ratio.value == pytest.approx(sum(eca) / sum(se)) and ratio.pairs == 5
    assert 1 < ratio.low <= ratio.value <= ratio.high
    assert verdict(ratio, "eca", "se", higher_is_better=True) == "eca faster"
    assert verdict(ratio, "eca", "se", higher_is_better=False) == "se faster"  # e.g. a p99


def test_noise_larger_than_the_difference_allows_no_verdict():
    se = [20.0, 25.0, 18.0, 23.0, 19.0]
    eca = [21.0, 22.0, 20.0, 24.0, 18.5]
    ratio = bootstrap_ratio(se, eca)
    assert ratio.low < 1 < ratio.high
    assert verdict(ratio, "eca", "se", higher_is_better=True) == NO_DIFFERENCE


def test_pairs_cancel_drift_that_both_models_share():
    """The machine slows down over the run; each pair ran back to back, so the ratio of every
    pair is steady and the interval stays narrow."""
    drift = [1.0, 0.8, 0.6, 0.9, 0.7]
    se = [20 * d for d in drift]
    eca = [21 * d for d in drift]
    ratio = bootstrap_ratio(se, eca)
    assert ratio.low == pytest.approx(1.05) and ratio.high == pytest.approx(1.05)


def test_trials_must_be_paired():
    with pytest.raises(ValueError, match="paired"):
        bootstrap_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="paired"):
        bootstrap_ratio([], [])


def test_capacity_is_the_last_rate_before_the_knee():
    levels = [
        Level(5, [200, 210, 190], 300, 0),
        Level(10, [400, 380, 420], 600, 0),
        Level(15, [900, 1200, 950], 900, 0),  # median 950: within 1 s
        Level(20, [3000, 2500, 2800], 1200, 0),
        Level(25, [800, 700, 900], 1500, 0),  # past the knee: does not count
    ]
    assert level_capacity(levels, 1000) == 15
    assert level_capacity(levels, 300) == 5
    assert level_capacity(levels, 100) is None
    failing = [Level(5, [100], 1000, 0), Level(10, [100], 1000, 1)]  # 0.1% errors: not within
    assert level_capacity(failing, 1000) == 5


def test_open_loop_users_and_rates():
    assert (Load("closed", 8).users(10), Load("closed", 8).user_rate(8)) == (8, 0.0)
    offered = Load("open", 12)
    assert offered.users(10) == 120 and offered.user_rate(120) == pytest.approx(0.1)
    assert Load("open", 0.2).users(10) == 4  # never fewer than 4
    assert (offered.label, Load("closed", 8).label) == ("12 req/s", "8 users")


def test_a_trial_is_invalid_when_anything_but_the_load_changed():
    before = {"gateway_worker_compiled_graphs": 4.0, "gateway_model_runtime{runtime=jit}": 1.0}
    row = {"requests": 100, "gateway_requests": 100.0, "arrivals_per_s": 10.0}
    load = Load("open", 10)
    assert invalid_because(before, before, row, load, 20) == []
    compiled = before | {"gateway_worker_compiled_graphs": 6.0}
    assert invalid_because(before, compiled, row, load, 20) == [
        "the worker compiled 2 graph(s) while measured"
    ]
    swapped = {"gateway_worker_compiled_graphs": 4.0, "gateway_model_runtime{runtime=eager}": 1.0}
    assert "runtime changed" in invalid_because(before, swapped, row, load, 20)[0]
    lost = row | {"gateway_requests": 98.0}
    assert "the gateway 98" in invalid_because(before, before, lost, load, 20)[0]
    # 200 arrivals expected in 20 s: 170 is within Poisson noise (3 sigma = 42), 150 is not
    assert invalid_because(before, before, row | {"arrivals_per_s": 8.5}, load, 20) == []
    short = invalid_because(before, before, row | {"arrivals_per_s": 7.5}, load, 20)
    assert short == ["the generator sent 7.5 of 10 req/s offered"]
    # Locust recorded no arrival at all (its users never started): invalid, not a crash
    silent = {k: v for k, v in row.items() if k != "arrivals_per_s"}
    assert invalid_because(before, before, silent, load, 20) == [
        "the generator sent 0.0 of 10 req/s offered"
    ]

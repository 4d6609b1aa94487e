"""The arithmetic of a verdict: ratios with bootstrap confidence intervals over paired trials,
the sentence they allow, and the capacity at a latency SLO. Plain Python, no I/O."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from perf.slo import RatePoint, capacity_at_slo

NO_DIFFERENCE = "no difference measurable at this precision"


@dataclass(frozen=True)
class Ratio:
    """``candidate / baseline`` of a metric's trial means, with a 95% bootstrap interval."""

    value: float
    low: float
    high: float
    pairs: int


def bootstrap_ratio(
    baseline: Sequence[float],
    candidate: Sequence[float],
    resamples: int = 10_000,
    seed: int = 0,
) -> Ratio:
    """Trials are paired by index (trial i of both ran back to back, in alternating order), so
    a pair is resampled as one: drift of the shared machine between pairs cancels out."""
    if len(baseline) != len(candidate) or not baseline:
        raise ValueError(f"need paired trials, got {len(baseline)} and {len(candidate)}")
    rng = random.Random(seed)
    n = len(baseline)

    def ratio(indices: Sequence[int]) -> float:
        base = sum(baseline[i] for i in indices)
        return sum(candidate[i] for i in indices) / base if base else float("nan")

    draws = sorted(ratio([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
    return Ratio(
        ratio(range(n)),
        draws[int(0.025 * resamples)],
        draws[min(resamples - 1, int(0.975 * resamples))],
        n,
    )


def verdict(ratio: Ratio, candidate: str, baseline: str, higher_is_better: bool) -> str:
    """What the interval allows saying: a winner only when it excludes 1."""
    if ratio.low > 1 or ratio.high < 1:
        candidate_wins = (ratio.low > 1) == higher_is_better
        return f"{candidate if candidate_wins else baseline} faster"
    return NO_DIFFERENCE


@dataclass(frozen=True)
class Level:
    """One model at one offered rate, over its valid trials."""

    offered: float
    p99_ms: list[float]
    requests: int
    failures: int

    @property
    def error_rate(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


def level_capacity(levels: Sequence[Level], slo_ms: float) -> float | None:
    """The capacity (``perf.slo``, the one rule) over the levels, each judged by the median
    p99 of its trials."""
    return capacity_at_slo(
        (
            RatePoint(
                level.offered,
                statistics.median(level.p99_ms) if level.p99_ms else math.nan,
                level.error_rate,
            )
            for level in levels
        ),
        slo_ms,
    )


def level_key(row: dict[str, Any]) -> tuple[str, float]:
    return row["mode"], row["load"]


def level_label(mode: str, load: float) -> str:
    return f"closed, {load:g} users" if mode == "closed" else f"open, {load:g} req/s"

"""The one definition of capacity, used by every benchmark and the load tests' report.

A rate is within the SLO when its p99 latency (of answered requests) is at most the SLO and the
share of requests not answered 200 is below ``ERROR_BUDGET``. Capacity is the highest offered
rate within the SLO with every lower measured rate within it too: the last rate before the knee.
A rate past a failing one does not count (a lucky run beyond the knee is noise, not capacity).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ERROR_BUDGET = 0.001
"""Share of requests that may fail (any status but 200) at a rate that counts as capacity."""


@dataclass(frozen=True)
class RatePoint:
    """One offered rate as measured: its p99 (NaN when nothing was answered) and the share of
    its requests that failed."""

    offered: float
    p99_ms: float
    failed: float


def meets_slo(point: RatePoint, slo_ms: float, budget: float = ERROR_BUDGET) -> bool:
    return not math.isnan(point.p99_ms) and point.p99_ms <= slo_ms and point.failed < budget


def capacity_at_slo(
    points: Iterable[RatePoint], slo_ms: float, budget: float = ERROR_BUDGET
) -> float | None:
    """The last offered rate before the knee (``None``: even the lowest missed the SLO)."""
    capacity = None
    for point in sorted(points, key=lambda p: p.offered):
        if not meets_slo(point, slo_ms, budget):
            break
        capacity = point.offered
    return capacity


def rate_point(row: dict[str, Any]) -> RatePoint:
    """A measured row (``perf.load.summarize``) as the capacity rule reads it."""
    return RatePoint(row["offered"], row["p99_ms"], row["refused_503"] + row["errors"])


def target_capacity(rows: list[dict[str, Any]], target: str, slo_ms: float) -> float | None:
    """``target``'s capacity over the rows measured for it (``row["target"]``)."""
    return capacity_at_slo((rate_point(r) for r in rows if r["target"] == target), slo_ms)

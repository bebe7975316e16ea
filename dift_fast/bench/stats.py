"""Summary statistics of repeated timings: percentiles and the coefficient of variation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["MAX_CV", "Summary", "percentile", "summarize"]

# Default stability limit: a configuration whose per-call times have a coefficient of variation (std / mean) above
# this is not reported. Repeated identical calls on a device nothing else uses vary by a few per cent; above 10 %
# something else competes for it (on the shared 2-core development machine at load average 3, the tiny model's
# calls varied with CV 0.03-0.07 on one thread and 0.4-0.9 on two threads, which contend with the other jobs), and
# differences of that size between two configurations, which is what a user runs this tool to tell apart, are noise.
MAX_CV = 0.10


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} must be in 0..100")
    return float(np.percentile(values, q))


@dataclass(frozen=True)
class Summary:
    """Percentiles, mean, spread and the raw values of one timed quantity (seconds)."""

    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float
    cv: float | None  # sample std / mean; None with fewer than 2 values
    values: tuple[float, ...]

    def scaled(self, factor: float) -> Summary:
        """The same summary with every value multiplied by ``factor`` (e.g. per call -> per image)."""
        return summarize([v * factor for v in self.values])

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["values"] = list(self.values)
        return data


def summarize(values: Sequence[float]) -> Summary:
    """Summary of ``values`` (at least one)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("cannot summarise an empty list of timings")
    mean = sum(values) / len(values)
    cv = None
    if len(values) >= 2:
        var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
        cv = math.sqrt(var) / mean if mean > 0 else math.inf
    return Summary(
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        mean=mean,
        min=min(values),
        max=max(values),
        cv=cv,
        values=tuple(values),
    )

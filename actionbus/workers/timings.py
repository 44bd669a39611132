"""Per-action-type handler timings and outcomes, kept in process for the metrics collector.

The pipeline's metrics layer calls ``timings_for(service).observe(action_type, outcome,
seconds)``; ``actionbus.metrics`` turns the totals into a Prometheus histogram and outcome
counters at scrape time. No dependency on prometheus-client here.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

__all__ = ["BUCKETS", "Timings", "timings_for"]

BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the handler duration histogram."""
_FIRST = BUCKETS[0]


HANDLED = "handled"


@dataclass(slots=True)
class _Series:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    handled: int = 0
    """Runs with the outcome ``"handled"`` (most of them): a plain counter, not in
    ``outcomes``, so the pipeline can count one with a single addition."""


class _Outcomes(Mapping[tuple[str, str], int]):
    """Live read-only view: (action type, outcome) -> runs, from the series by type (no
    tuple key is built per action)."""

    def __init__(self, durations: dict[str, _Series]) -> None:
        self._durations = durations

    def __getitem__(self, key: tuple[str, str]) -> int:
        series = self._durations.get(key[0])
        if series is None:
            raise KeyError(key)
        if key[1] == HANDLED:
            if not series.handled:
                raise KeyError(key)
            return series.handled
        return series.outcomes[key[1]]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for action_type, series in list(self._durations.items()):
            if series.handled:
                yield action_type, HANDLED
            for outcome in list(series.outcomes):
                yield action_type, outcome

    def __len__(self) -> int:
        return sum(len(series.outcomes) + (series.handled > 0)
                   for series in self._durations.values())


class Timings:
    """Durations by action type and outcome counts by (action type, outcome)."""

    def __init__(self) -> None:
        self.durations: dict[str, _Series] = {}
        self.outcomes: Mapping[tuple[str, str], int] = _Outcomes(self.durations)
        """Runs by (action type, outcome): a live view."""

    def observe(self, action_type: str, outcome: str, seconds: float) -> None:
        """Record one handler run."""
        series = self.durations.get(action_type)
        if series is None:
            series = self.durations[action_type] = _Series()
        # most runs fall in the first bucket: no bisect for them
        series.counts[0 if seconds <= _FIRST else bisect.bisect_left(BUCKETS, seconds)] += 1
        series.total += seconds
        if outcome == HANDLED:
            series.handled += 1
        else:
            outcomes = series.outcomes
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def cumulative(self, action_type: str) -> tuple[list[tuple[str, float]], float]:
        """Prometheus-style cumulative buckets (``le`` -> count, ``+Inf`` last) and the sum."""
        series = self.durations[action_type]
        out, running = [], 0
        for bound, count in zip((*[str(b) for b in BUCKETS], "+Inf"), series.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out, series.total


_BY_SERVICE: dict[str, Timings] = {}


def timings_for(service: str) -> Timings:
    """The process-wide timings of ``service``'s handlers."""
    timings = _BY_SERVICE.get(service)
    if timings is None:
        timings = _BY_SERVICE[service] = Timings()
    return timings

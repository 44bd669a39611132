"""Collected figures, the targets they are judged against, the printed table and the JSON."""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import SIDES, Summary

HEADERS = {"raw": "raw redis-py", "actionbus": "actionbus", "faststream": "FastStream"}


@dataclass
class Figure:
    """One measured quantity: its per-repetition values for each side."""

    scenario: int
    key: str
    label: str
    unit: str
    values: dict[str, list[float]] = field(default_factory=dict)

    def summary(self, side: str) -> Summary | None:
        """Median and range of ``side``, if measured."""
        values = self.values.get(side)
        return Summary.of(values) if values else None

    def ratio(self, side: str, other: str) -> float | None:
        """Median of ``side`` divided by the median of ``other``."""
        mine, theirs = self.summary(side), self.summary(other)
        if mine is None or theirs is None or theirs.median == 0:
            return None
        return mine.median / theirs.median


_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "<": operator.lt,
}


@dataclass(frozen=True)
class Target:
    """A goal: ``key``'s actionbus median over ``other``'s median (or, with no ``other``,
    actionbus's worst repetition) compared with ``bound`` by ``op``."""

    label: str
    key: str
    other: str | None
    op: str
    bound: float
    over_key: str | None = None
    """If set: ``side``'s median of ``key`` over its median of ``over_key`` (one side, two
    figures, e.g. p99 under load over p99 idle)."""
    side: str = "actionbus"

    def judge(self, figures: dict[str, Figure]) -> tuple[float | None, str]:
        """The measured value and ``MET`` / ``NOT MET`` / ``not measured``."""
        figure = figures.get(self.key)
        if figure is None:
            return None, "not measured"
        if self.over_key is not None:
            base = figures.get(self.over_key)
            mine = figure.summary(self.side)
            theirs = None if base is None else base.summary(self.side)
            value = None if mine is None or theirs is None or theirs.median == 0 \
                else mine.median / theirs.median
        elif self.other is None:
            summary = figure.summary("actionbus")
            value = None if summary is None else summary.high
        else:
            value = figure.ratio("actionbus", self.other)
        if value is None or math.isnan(value):
            return None, "not measured"
        return value, "MET" if _OPS[self.op](value, self.bound) else "NOT MET"


TARGETS = (
    Target("send_action_async sequential >= 0.8x raw XADD", "send.seq", "raw", ">=", 0.8),
    Target("send_actions_async batch >= 0.7x raw pipelined XADD", "send.batch", "raw", ">=",
           0.7),
    Target("worker drain, 1 process >= 0.5x raw XREADGROUP+XACK loop", "drain.1", "raw", ">=",
           0.5),
    Target("worker drain, 1 process >= 0.75x raw (issue 16)", "drain.1", "raw", ">=", 0.75),
    Target("worker drain, 2 processes >= 0.75x raw with two (issue 16)", "drain.2", "raw", ">=",
           0.75),
    Target("worker drain, 1 process >= 8x FastStream group subscriber", "drain.1",
           "faststream", ">=", 8),
    Target("pseudo-sync sequential p50 <= 1.3x raw request/reply", "rpc.seq.p50", "raw", "<=",
           1.3),
    Target("pseudo-sync 50 callers throughput >= 1x raw", "rpc.conc.rate", "raw", ">=", 1.0),
    Target("pseudo-sync 50 callers throughput >= 5x FastStream", "rpc.conc.rate", "faststream",
           ">=", 5.0),
    Target("1,000 concurrent calls, 20 connections: timeouts (worst rep) = 0",
           "burst.timeouts", None, "<=", 0),
    Target("1,000 concurrent calls, 20 connections: errors (worst rep) = 0", "burst.errors",
           None, "<=", 0),
    Target("worker RSS growth 100k -> 1M actions < 10 (%)", "long.rss_growth", None, "<", 10),
    Target("stream length after trim within retention (entries above) = 0",
           "long.over_retention", None, "<=", 0),
    Target("delayed send >= 0.5x plain send_action_async", "delayed.send", "raw", ">=", 0.5),
    Target("mover lateness p99 at 10k due/s (worst rep) < 100 ms", "delayed.late.p99", None,
           "<", 100),
    Target("pseudo-sync p99 under 25k/s bulk <= 2x idle p99, with lanes (issue 16)",
           "load.25k/s.lanes.p99", None, "<=", 2.0, over_key="load.idle.lanes.p99"),
    Target("  the same for the raw floor (own stream, own responder): no library beats it",
           "load.25k/s.floor.p99", None, "<=", 2.0, over_key="load.idle.floor.p99",
           side="raw"),
)


class Results:
    """Everything one run measured."""

    def __init__(self) -> None:
        self.figures: dict[str, Figure] = {}
        self.notes: dict[str, Any] = {}

    def add(
        self, scenario: int, key: str, label: str, unit: str, side: str, value: float
    ) -> None:
        """Record one repetition's ``value`` of figure ``key`` for ``side``."""
        figure = self.figures.setdefault(key, Figure(scenario, key, label, unit))
        figure.values.setdefault(side, []).append(value)

    def note(self, key: str, value: Any) -> None:
        """Record a fact about the run (sizes, counts, versions)."""
        self.notes[key] = value

    def to_json(self, wall_s: float, meta: dict[str, Any]) -> dict[str, Any]:
        """The JSON document written to ``bench/results/latest.json``."""
        figures = []
        for fig in self.figures.values():
            sides = {}
            for side in SIDES:
                summary = fig.summary(side)
                if summary is not None:
                    sides[side] = {
                        "median": summary.median, "min": summary.low, "max": summary.high,
                        "values": list(summary.values),
                    }
            figures.append({
                "scenario": fig.scenario, "key": fig.key, "label": fig.label,
                "unit": fig.unit, "sides": sides,
                "actionbus_vs_raw": fig.ratio("actionbus", "raw"),
                "actionbus_vs_faststream": fig.ratio("actionbus", "faststream"),
            })
        targets = []
        for target in TARGETS:
            value, verdict = target.judge(self.figures)
            targets.append({"target": target.label, "measured": value, "verdict": verdict})
        return {"meta": {**meta, "wall_s": wall_s}, "notes": self.notes,
                "figures": figures, "targets": targets}


def _number(value: float) -> str:
    if math.isnan(value):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(summary: Summary | None) -> str:
    if summary is None:
        return "-"
    if len(summary.values) == 1 or summary.low == summary.high:
        return _number(summary.median)
    return f"{_number(summary.median)} ({_number(summary.low)}-{_number(summary.high)})"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def table(results: Results) -> str:
    """The figures as a fixed-width table, then the targets with their verdicts."""
    header = ["#", "figure", "unit", *(HEADERS[s] for s in SIDES), "ab/raw", "ab/FS"]
    rows = [header]
    for fig in sorted(results.figures.values(), key=lambda f: f.scenario):
        rows.append([
            str(fig.scenario), fig.label, fig.unit, *(_cell(fig.summary(s)) for s in SIDES),
            _ratio(fig.ratio("actionbus", "raw")), _ratio(fig.ratio("actionbus", "faststream")),
        ])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for n, row in enumerate(rows):
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs]
        lines.append("  ".join(cells).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += ["", "Targets (ratios of medians measured in this run):"]
    for target in TARGETS:
        value, verdict = target.judge(results.figures)
        shown = "-" if value is None else (
            f"{value:.2f}x" if target.other is not None or target.over_key is not None
            else _number(value)
        )
        lines.append(f"  [{verdict:>12}]  {target.label}: {shown}")
    return "\n".join(lines)


def write_json(document: dict[str, Any], path: Path) -> None:
    """Write the results document (creating its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")

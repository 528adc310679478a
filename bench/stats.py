"""Measurements, targets and sections: what a scenario found and how the report judges it."""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Target:
    """A goal for a measurement: stay below `limit`, or reach it when `higher` is set.

    `on` names the statistic that is judged: the median, or the worst case (`max` for a
    limit, `min` for a goal to reach).
    """

    limit: float
    higher: bool = False
    on: str = "median"

    def describe(self, unit: str) -> str:
        """The target as the report shows it, e.g. `< 2 s` or `≥ 90 %`."""
        sign = "≥" if self.higher else "<"
        where = "" if self.on == "median" else f" ({self.on})"
        return f"{sign} {self.limit:g} {unit}{where}".replace("  ", " ")


@dataclass
class Metric:
    """One measurement over repetitions, with its unit, target and a short note."""

    name: str
    unit: str
    values: list[float]
    target: Target | None = None
    note: str = ""

    @property
    def median(self) -> float:
        """The median of the values (NaN when there are none)."""
        return statistics.median(self.values) if self.values else math.nan

    @property
    def min(self) -> float:
        """The smallest value (NaN when there are none)."""
        return min(self.values) if self.values else math.nan

    @property
    def max(self) -> float:
        """The largest value (NaN when there are none)."""
        return max(self.values) if self.values else math.nan

    def judged(self) -> float:
        """The statistic the target is about."""
        if self.target is None:
            return self.median
        return {"median": self.median, "max": self.max, "min": self.min}[self.target.on]

    def verdict(self) -> str:
        """`pass`, `MISS`, `n/a` (nothing measured) or `—` (no target)."""
        if self.target is None:
            return "—"
        value = self.judged()
        if math.isnan(value):
            return "n/a"
        ok = value >= self.target.limit if self.target.higher else value < self.target.limit
        return "pass" if ok else "MISS"


@dataclass
class Section:
    """What one scenario reports: headline metrics, detail tables and notes."""

    key: str
    title: str
    metrics: list[Metric] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    """Markdown blocks (tables with a heading) shown under the section."""
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    load_start: tuple[float, float, float] = field(default_factory=os.getloadavg)
    load_end: tuple[float, float, float] | None = None
    seconds: float = 0.0

    def add(self, name: str, unit: str, values: list[float], target: Target | None = None,
            note: str = "") -> Metric:
        """Record a metric and return it."""
        metric = Metric(name, unit, list(values), target, note)
        self.metrics.append(metric)
        return metric

    def detail(self, heading: str, headers: list[str], rows: list[list[str]]) -> None:
        """Add a detail table under a small heading."""
        self.details.append(f"#### {heading}\n\n{md_table(headers, rows)}")


def fmt(value: float, unit: str = "") -> str:
    """A number as the report shows it, with a precision that suits its unit."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if unit in ("runs", "files", "count"):
        return f"{value:.0f}"
    if unit in ("MiB/s", "MiB", "%"):
        return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"
    if unit == "ms":
        return f"{value:.0f}" if abs(value) >= 10 else f"{value:.1f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"


def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def md_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table (cells' `|` escaped)."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def summary_row(m: Metric) -> list[str]:
    """A metric as a row: name, median, min, max, n, target, result."""
    unit = f" {m.unit}" if m.unit else ""
    name = m.name + (f" ({m.note})" if m.note else "")
    return [name, fmt(m.median, m.unit) + unit, fmt(m.min, m.unit), fmt(m.max, m.unit),
            str(len(m.values)), m.target.describe(m.unit) if m.target else "—", m.verdict()]

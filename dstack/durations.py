"""How long something took: the seconds between two ISO 8601 times, and how listings show them."""

from __future__ import annotations

from datetime import datetime


def elapsed_s(start: str, end: str | None, now: float) -> float:
    """Seconds from `start` to `end` (ISO 8601 times), or to `now` (epoch seconds) when
    there is no end yet; never negative."""
    t1 = datetime.fromisoformat(end).timestamp() if end else now
    return max(0.0, t1 - datetime.fromisoformat(start).timestamp())


def format_elapsed(seconds: float | None) -> str:
    """A duration as `dstack ps` shows it: `4.2s`, `3m07s`, `2h05m`; empty for None."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

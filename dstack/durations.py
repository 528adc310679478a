"""How long something took: the seconds between two ISO 8601 times, how listings show them,
and durations as people write them (`72h`, `90m`, `7d`)."""

from __future__ import annotations

import re
from datetime import datetime

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_parse = datetime.fromisoformat


def duration_s(value: object) -> float | None:
    """Seconds of `72h`, `90m`, `7d`, `3600s` or a bare number of seconds; None when `value`
    is not written like that."""
    match = None if isinstance(value, bool) else _DURATION.match(str(value))
    return float(match[1]) * _UNIT_S[match[2].lower()] if match else None


def elapsed_s(start: str, end: str | None, now: float) -> float:
    """Seconds from `start` to `end` (ISO 8601 times), or to `now` (epoch seconds) when
    there is no end yet; never negative."""
    t1 = _parse(end).timestamp() if end else now
    seconds = t1 - _parse(start).timestamp()
    return seconds if seconds > 0.0 else 0.0  # max(0.0, ...) without its call: per listed run


def format_elapsed(seconds: float | None) -> str:
    """A duration as `dstack ps` shows it: `4.2s`, `3m07s`, `2h05m`; empty for None."""
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"

"""What runs cost: a run's billing closed when its stack is destroyed, and `dstack cost`.

The arithmetic is `dstack.run.billing`'s: a cloud run's list price times the time from the
`up` that created its instance to the `destroy` that deleted it (to now while it is up).
`cost_report` sums it over the runs in the profile's store submitted since a time, grouped by
who started them (`owner`), by workflow or by UTC day. Every figure is an estimate from the
instance catalogue's list prices, and the report says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import TypedDict

from dstack.durations import duration_s
from dstack.errors import NotFoundError, UsageError
from dstack.json_types import JsonDoc
from dstack.names import did_you_mean
from dstack.run.audit import recorded_updates
from dstack.run.billing import Billing, billed_interval
from dstack.run.listing import run_docs
from dstack.run.record import load_run
from dstack.store.base import Store

GROUPINGS = ("user", "workflow", "day")
"""What `dstack cost --by` groups runs by: their `owner`, their workflow, their UTC day."""
DEFAULT_SINCE = "7d"
UNKNOWN_OWNER = "(unknown)"
"""The `user` of runs recorded before runs had an owner."""


class CostGroup(TypedDict):
    """The runs of one group (or all of them: `key` "total") and what they cost."""

    key: str
    runs: int
    priced: int
    running: int
    billed_s: float
    cost: float


class CostReport(TypedDict):
    """What `dstack cost` shows (`cost_report`): USD estimated from list prices."""

    since: str
    by: str
    currency: str
    estimate: str
    price_dates: list[str]
    groups: list[CostGroup]
    total: CostGroup


def closed_billing(store: Store, run_name: str) -> dict[str, object]:
    """After the run's stack was destroyed: its `billing` with `deleted_at` from the recorded
    `destroy` update (as a change for `update_run`); none when it has no billing, it is
    already closed, or no such update is recorded."""
    try:
        billing = load_run(store, run_name).billing
    except NotFoundError:
        return {}
    if billing is None or billing.deleted_at:
        return {}
    _, deleted = billed_interval(recorded_updates(store, run_name))
    if deleted is None:
        return {}
    return {"billing": billing.model_copy(update={"deleted_at": deleted}).model_dump()}


def since_time(since: str, now: float) -> float:
    """The epoch seconds `since` (`7d`, `12h`, `90m`) before `now`; a UsageError naming
    `--since` when it is not such a duration."""
    seconds = duration_s(since)
    if seconds is None or seconds <= 0:
        raise UsageError(f"--since {since!r} is not a duration",
                         "Write it like 7d, 12h, 90m or 3600s (days, hours, minutes, seconds).")
    return now - seconds


def check_grouping(by: str) -> str:
    """`by` when runs can be grouped by it; a UsageError naming `--by` otherwise."""
    if by not in GROUPINGS:
        raise UsageError(f"--by {by!r} is not a grouping",
                         did_you_mean(by, GROUPINGS) or f"Group by {', '.join(GROUPINGS)}.")
    return by


def group_key(doc: JsonDoc, by: str) -> str:
    """The group of a run document: its owner, its workflow (`(python)` for a provider
    run without one), or the UTC day it was submitted."""
    if by == "user":
        return str(doc.get("owner") or UNKNOWN_OWNER)
    if by == "workflow":
        return str(doc.get("workflow") or f"({doc.get('provider')})")
    return _utc(str(doc.get("submitted_at"))).date().isoformat()


def _utc(iso: str) -> datetime:
    return datetime.fromisoformat(iso).astimezone(timezone.utc)


def _group(key: str, docs: Iterable[JsonDoc], now: float) -> CostGroup:
    group: CostGroup = {"key": key, "runs": 0, "priced": 0, "running": 0, "billed_s": 0.0,
                        "cost": 0.0}
    for doc in docs:
        group["runs"] += 1
        if not doc.get("billing"):
            continue
        billing = Billing.model_validate(doc["billing"])
        group["priced"] += 1
        group["running"] += billing.deleted_at is None
        group["billed_s"] += billing.billed_s(now)
        group["cost"] += billing.cost(now)
    return group


def summarize(docs: Iterable[JsonDoc], by: str, since: float, now: float) -> CostReport:
    """The cost of the run documents submitted at or after `since` (epoch seconds), grouped
    `by` one of `GROUPINGS`: days oldest first, else the costliest first."""
    check_grouping(by)
    chosen = [d for d in docs if d.get("submitted_at")
              and _utc(str(d["submitted_at"])).timestamp() >= since]
    members: dict[str, list[JsonDoc]] = {}
    for doc in chosen:
        members.setdefault(group_key(doc, by), []).append(doc)
    groups = [_group(key, items, now) for key, items in members.items()]
    if by == "day":
        groups.sort(key=lambda g: g["key"])
    else:
        groups.sort(key=lambda g: (-g["cost"], g["key"]))
    dates = sorted({str(d["billing"]["price_date"]) for d in chosen if d.get("billing")})
    return {"since": datetime.fromtimestamp(since, timezone.utc).isoformat(timespec="seconds"),
            "by": by, "currency": "USD", "estimate": estimate_note(dates),
            "price_dates": dates, "groups": groups, "total": _group("total", chosen, now)}


def estimate_note(price_dates: list[str]) -> str:
    """What the figures are: estimates from the catalogue's list prices, of which dates."""
    if not price_dates:
        from dstack.catalogue.offers import load_catalogue

        price_dates = [load_catalogue().prices_as_of.isoformat()]
    return ("An estimate from list prices in dstack's instance catalogue (prices as of "
            f"{', '.join(price_dates)}; spot runs at a typical spot price), times the time "
            "from each instance's creation to its deletion. Not your cloud bill: disks, "
            "traffic, storage, taxes and discounts are left out, and prices change.")


def cost_report(store: Store, since: float, by: str, now: float,
                cache: Path | None = None) -> CostReport:
    """`dstack cost`: what the runs in `store` submitted at or after `since` (epoch seconds,
    see `since_time`) cost by `now`, grouped `by` user, workflow or day (`check_grouping`);
    `cache` is the listing cache (`dstack.run.listing`)."""
    return summarize(run_docs(store, cache), by, since, now)

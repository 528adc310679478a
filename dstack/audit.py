"""The audit trail of a run: its stack's Pulumi history, with the resources each update
created or deleted.

Pulumi's history is the source of truth for updates (kind, start, end, result, counts);
the names of the resources each update touched are recorded by dstack as it runs them, in
`runs/<run>/stack.json`, and joined in order.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from dstack.backend import ResourceChange, UpdateRecord
from dstack.runs import now
from dstack.store import Store


def stack_key(run: str) -> str:
    """Store key of a run's recorded stack updates."""
    return f"runs/{run}/stack.json"


def record_update(store: Store, run: str, kind: str, changes: list[ResourceChange]) -> None:
    """Remember which resources an update of the run's stack changed."""

    def mutate(doc: dict[str, Any]) -> dict[str, Any]:
        updates = list(doc.get("updates", []))
        updates.append({"kind": kind, "at": now(), "changes": [asdict(c) for c in changes]})
        return {"version": 1, "updates": updates}

    store.update_json(stack_key(run), mutate)


def audit_trail(store: Store, run: str, history: list[UpdateRecord]) -> list[dict[str, Any]]:
    """Each update of the run's stack, oldest first, with the resources it touched."""
    try:
        recorded = store.get_json(stack_key(run)).get("updates", [])
    except Exception:
        recorded = []
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for item in recorded:
        by_kind.setdefault(item["kind"], []).append(item)
    trail = []
    for update in history:
        kind = "up" if update.kind == "update" else update.kind
        names = by_kind.get(kind, [])
        touched = names.pop(0)["changes"] if names else []
        trail.append({**asdict(update), "kind": kind, "resources": touched})
    return trail

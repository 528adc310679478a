"""The audit trail of a run: its stack's Pulumi history, with the resources each update
created or deleted.

Pulumi's history is the source of truth for updates (version, kind, start, end, result,
counts); the names of the resources each update touched are recorded by dstack as it runs
them, in `runs/<run>/stack.json`, and joined in order. `dstack rm` deletes that record with
the run's, but not the stack: a removed run is audited from Pulumi's history alone.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from dataclasses import asdict, dataclass
from typing import TypedDict

from dstack.config.backends import Backend, ResourceChange, UpdateRecord
from dstack.errors import DstackError, NotFoundError
from dstack.json_types import JsonDoc
from dstack.names import RUN_NAME, did_you_mean
from dstack.run.record import list_run_names, load_run, now, run_stack_name
from dstack.store.base import Store
from dstack.store.keys import stack_key


class RecordedChange(TypedDict):
    """A resource an update touched, as dstack recorded it (a `ResourceChange`)."""

    op: str
    type: str
    name: str


class AuditEntry(TypedDict):
    """One update of a run's stack, as `audit_trail` tells it."""

    version: int
    kind: str
    result: str
    start: str
    end: str | None
    changes: dict[str, int] | None
    resources: list[RecordedChange] | None
    pulumi_changes: dict[str, int]


def record_update(store: Store, run: str, kind: str, changes: list[ResourceChange]) -> str:
    """Remember which resources an update of the run's stack changed; when (ISO 8601)."""
    at = now()

    def mutate(doc: JsonDoc) -> JsonDoc:
        updates = list(doc.get("updates", []))
        updates.append({"kind": kind, "at": at, "changes": [asdict(c) for c in changes]})
        return {"version": 1, "updates": updates}

    store.update_json(stack_key(run), mutate)
    return at


def recorded_updates(store: Store, run: str) -> list[JsonDoc]:
    """The updates of the run's stack as `record_update` kept them, oldest first (none when
    there is no record of them)."""
    try:
        updates = store.get_json(stack_key(run)).get("updates", [])
    except Exception:
        return []
    return list(updates) if isinstance(updates, list) else []


def audit_trail(store: Store, run: str, history: list[UpdateRecord]) -> list[AuditEntry]:
    """Each update of the run's stack, oldest first.

    `version` is the update's number in the stack's history (1 for the first). `resources`
    are the resources of the run's program the update touched (op, type, name), as dstack
    recorded them, or None when it has no record of the update (the run was removed, or dstack
    did not run that update); `changes` counts exactly those by operation (None with them).
    `pulumi_changes` is Pulumi's own count, which also counts the stack's resource
    (`pulumi:pulumi:Stack`) and explicit provider resources (`pulumi:providers:*`), not the
    default providers: on the local backend the first update creates 3 for 2 run resources.
    """
    recorded = recorded_updates(store, run)
    by_kind: dict[str, list[JsonDoc]] = {}
    for item in recorded:
        by_kind.setdefault(item["kind"], []).append(item)
    trail: list[AuditEntry] = []
    for update in history:
        kind = "up" if update.kind == "update" else update.kind
        names = by_kind.get(kind, [])
        touched = names.pop(0)["changes"] if names else None
        counts = None if touched is None else dict(Counter(c["op"] for c in touched))
        trail.append({"version": update.version, "kind": kind, "result": update.result,
                      "start": update.start, "end": update.end, "changes": counts,
                      "resources": touched, "pulumi_changes": update.changes})
    return trail


@dataclass(frozen=True)
class Audit:
    """What `dstack audit RUN` shows: the updates of the run's stack (`audit_trail`), whether
    the run's record was removed (only the stack's history is then known), and the
    `pulumi stack history` command that lists the same updates."""

    run: str
    updates: list[AuditEntry]
    removed: bool
    command: str
    owner: str | None = None
    """Who started the run (None when its record was removed or does not say)."""


def audit_run(store: Store, backend: Backend, run: str) -> Audit:
    """The audit of `run`, also when `dstack rm` removed its record but its stack remains;
    NotFoundError (with the closest name of a run or a removed run's stack) when neither is."""
    owner = None
    try:
        owner = load_run(store, run).owner
        removed = False
    except NotFoundError:
        removed = True
    try:
        history = backend.history(run)
    except NotFoundError:
        if removed:
            raise _no_run(store, backend, run) from None
        raise
    return Audit(run=run, updates=audit_trail(store, run, history), removed=removed,
                 command=backend.history_command(run), owner=owner)


def _no_run(store: Store, backend: Backend, run: str) -> NotFoundError:
    names = set(list_run_names(store))
    prefix = run_stack_name("")
    with contextlib.suppress(DstackError):  # the suggestion is a courtesy
        names |= {s.name[len(prefix):] for s in backend.stacks() if s.name.startswith(prefix)}
    hint = did_you_mean(run, names) if RUN_NAME.match(run) else None
    return NotFoundError(f"no run named {run!r}", hint or "`dstack ps -a` lists the runs.")

"""The rows a listing shows for runs that no longer change, rendered once and kept.

A settled run (finished, its stack torn down, its billing closed) shows the same text in
`dstack ps` every time, so rendering it again (its local time, duration and cost) for each of
10,000 runs is most of what `ps -a` does. `rows` keeps what `render` made for such runs in a
file beside the listing cache, under the caller's `key`, which names how rows are rendered
(the format's version, the time zone): another key renders them all again. A row is taken
only for a run of the same name and `submitted_at`, so a name used again after `dstack rm`
gets its own. The file can be deleted at any time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import cast

from dstack.home import write_private
from dstack.json_types import JsonDoc
from dstack.run.listing import no_gc, settled

Row = list[str]
MIN_KEPT = 200
"""Fewer runs than this are rendered without the file: reading it would cost more."""


def fixed(doc: Mapping[str, object]) -> bool:
    """Whether the run's row can no longer change: settled, with an end, and its billing (if
    it has one) closed."""
    billing = doc.get("billing")
    return settled(doc) and bool(doc.get("finished_at")) and \
        (billing is None or (isinstance(billing, Mapping) and bool(billing.get("deleted_at"))))


def _load(path: Path, key: str) -> dict[str, Row]:
    try:
        with no_gc():
            doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    kept = doc.get("rows") if isinstance(doc, dict) and doc.get("key") == key else None
    return cast("dict[str, Row]", kept) if isinstance(kept, dict) else {}


def rows(path: Path | None, key: str, docs: Sequence[JsonDoc],
         render: Callable[[JsonDoc], Row]) -> list[Row]:
    """`render(doc)` for each of `docs`, in order: kept from an earlier call with the same
    `key` for runs that no longer change (`fixed`), rendered now for the others. Rows rendered
    now for fixed runs are added to the file at `path` (none: nothing is kept)."""
    if path is not None and len(docs) < MIN_KEPT:
        path = None
    kept = _load(path, key) if path is not None else {}
    made: dict[str, Row] = {}
    out: list[Row] = []
    for doc in docs:
        if not fixed(doc):
            out.append(render(doc))
            continue
        name, submitted = str(doc.get("name")), doc.get("submitted_at")
        row = kept.get(name)
        if not isinstance(row, list) or not row or row[0] != submitted:
            row = made[name] = [str(submitted), *render(doc)]
        out.append(row[1:])
    if made and path is not None:
        body = json.dumps({"key": key, "rows": {**kept, **made}}, separators=(",", ":"))
        write_private(path, body.encode())
    return out

"""Listing runs and tags fast, with a cache in the dstack home.

A run that finished and whose stack is torn down no longer changes, so the fields of its
document that listings show (`LISTED`) are cached and it is not read again; only runs still
in progress are read each time. Tags are cached by the store's version token of each tag
document, and the tags folder's own token (`Store.folder_version`) when the store has one:
while it is unchanged no tag was written or removed, and the tags are not even listed. The
store stays the truth: a run or tag that disappears from it disappears from the listing, and
the cache can be deleted at any time. A process loads the cache once, and writes it only
when something changed.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TypedDict, cast

from dstack.durations import elapsed_s
from dstack.errors import NotFoundError, StoreError
from dstack.home import write_private
from dstack.json_types import JsonDoc
from dstack.run.billing import run_cost
from dstack.run.record import TERMINAL, public_url
from dstack.store.base import Store
from dstack.store.keys import RUNS, TAGS, run_key, tag_of

_FINAL = {s.value for s in TERMINAL}
LISTED = ("name", "workflow", "project", "provider", "status", "submitted_at", "started_at",
          "finished_at", "backend", "exit_code", "message", "torn_down", "owner", "billing")
"""The fields of a settled run that listings read (and `job.artifacts`, as paths)."""
CACHE_VERSION = 5
"""Of the cache file; a cache of another version (2 kept no `project`, 3 no `owner` and
`billing`, 4 no `tags_at`) is rebuilt."""


class _TagEntry(TypedDict):
    """A tag document in the cache, with the store's version token of it."""

    v: str
    doc: JsonDoc


class _Cache(TypedDict, total=False):
    """The cache file: of which store, the settled runs (`LISTED` fields), the tags and the
    tags folder's token when they were listed (None: the store has none)."""

    version: int
    store: str
    runs: dict[str, JsonDoc]
    tags: dict[str, _TagEntry]
    tags_at: str | None


class RunSummary(TypedDict):
    """A run as `dstack ps` shows it (`run_summary`); fields a document lacks are None.
    `cost` is USD estimated from the instance's list price (`dstack.run.billing`)."""

    run: str | None
    workflow: str
    project: str | None
    owner: str | None
    provider: str | None
    status: str | None
    submitted: str | None
    duration: float | None
    backend: str | None
    tags: list[str]
    artifacts: list[str]
    apps: list[str]
    exit_code: int | None
    message: str | None
    cost: float | None


_loaded: dict[Path, _Cache] = {}


def settled(doc: Mapping[str, object]) -> bool:
    """A run document that will not change any more."""
    return doc.get("status") in _FINAL and bool(doc.get("torn_down"))


@contextmanager
def _no_gc() -> Iterator[None]:
    """The garbage collector paused: parsing tens of thousands of documents makes no cycles,
    and collections while they pile up would add about a third to the time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _load(path: Path | None, store: Store) -> _Cache:
    """The cache of `store` (empty when missing, unreadable or of another store)."""
    if path is None:
        return {}
    if path not in _loaded:
        try:
            with _no_gc():
                doc = json.loads(path.read_bytes())
        except (OSError, ValueError):
            doc = {}
        ours = isinstance(doc, dict) and doc.get("version") == CACHE_VERSION
        _loaded[path] = cast("_Cache", doc) if ours else {}  # of this version: as it was saved
    loaded = _loaded[path]
    return loaded if loaded.get("store") == store.url else {}


def _save(path: Path | None, doc: _Cache) -> None:
    if path is not None:
        write_private(path, json.dumps(doc, separators=(",", ":")).encode())
        _loaded[path] = doc


def _listed(doc: JsonDoc) -> JsonDoc:
    """What the cache keeps of a settled run's document."""
    out = {k: doc.get(k) for k in LISTED}
    out["job"] = {"artifacts": [{"path": a.get("path")}
                                for a in (doc.get("job") or {}).get("artifacts") or []]}
    return out


def run_docs(store: Store, cache: Path | None = None) -> list[JsonDoc]:
    """Every run document, newest first; with a cache, settled runs have only the `LISTED`
    fields (read the run itself for more)."""
    return _newest_runs(list(_current_runs(store, cache).values()))


def unsettled_docs(store: Store, cache: Path | None = None) -> list[JsonDoc]:
    """The documents of the runs that may still change, newest first: what housekeeping
    goes through (settled runs in the cache are not even looked at)."""
    return _newest_runs([d for d in _current_runs(store, cache).values() if not settled(d)])


def _newest_runs(docs: list[JsonDoc]) -> list[JsonDoc]:
    return sorted(docs, key=lambda d: str(d.get("submitted_at", "")), reverse=True)


def _current_runs(store: Store, cache: Path | None) -> dict[str, JsonDoc]:
    """Run name → its document (settled ones from the cache); the cache saved if it
    changed."""
    whole = _load(cache, store)
    cached = whole.get("runs", {})
    fresh: dict[str, JsonDoc] = {}
    dirty = False
    for name in store.list_dirs(RUNS):
        doc = cached.get(name)
        if doc is None or not settled(doc):
            try:
                doc = store.get_json(run_key(name))
            except (NotFoundError, StoreError):
                continue
            if cache is not None and settled(doc):
                doc = _listed(doc)
                dirty = True
        fresh[name] = doc
    if dirty or len([n for n in cached if n in fresh]) != len(cached):
        _save(cache, {"version": CACHE_VERSION, "store": store.url, "tags": whole.get("tags", {}),
                      "tags_at": whole.get("tags_at"),
                      "runs": {n: d for n, d in fresh.items() if settled(d)}})
    return fresh


def project_runs(docs: list[JsonDoc], project: str | None) -> list[JsonDoc]:
    """The documents of runs of `project` (None: of the unknown project, recorded before
    runs had one)."""
    return [d for d in docs if d.get("project") == project]


RECENT = 10
"""How many of the newest runs `dstack ps` lists, besides the unfinished ones, without -a."""


def shown_runs(docs: list[JsonDoc], project: str | None, *, all_projects: bool = False,
               all_runs: bool = False) -> list[JsonDoc]:
    """The run documents (newest first, as `run_docs` gives them) that `dstack ps` lists: of
    `project` unless `all_projects`; of those, the unfinished ones and the `RECENT` newest,
    or every one with `all_runs`."""
    if not all_projects:
        docs = project_runs(docs, project)
    if all_runs:
        return docs
    recent = {d.get("name") for d in docs[:RECENT]}
    return [d for d in docs if d.get("status") not in _FINAL or d.get("name") in recent]


def tag_docs(store: Store, cache: Path | None = None) -> list[JsonDoc]:
    """Every tag document, newest first (unchanged ones from the cache)."""
    whole = _load(cache, store)
    cached = whole.get("tags", {})
    at = store.folder_version(TAGS) if cache is not None else None  # before it is listed
    if at is not None and whole.get("tags_at") == at:
        return _newest_first([e["doc"] for e in cached.values()])
    fresh: dict[str, _TagEntry] = {}
    dirty = at != whole.get("tags_at")
    for key, version in store.list_versions(TAGS).items():
        if tag_of(key) is None:
            continue
        entry = cached.get(key)
        if entry is None or entry.get("v") != version:
            try:
                entry = {"v": version, "doc": store.get_json(key)}
            except (NotFoundError, StoreError):
                continue
            dirty = True
        fresh[key] = entry
    if dirty or len(fresh) != len(cached):
        whole = {**whole, "version": CACHE_VERSION, "store": store.url, "tags": fresh,
                 "tags_at": at}
        whole.setdefault("runs", {})
        _save(cache, whole)
    return _newest_first([e["doc"] for e in fresh.values()])


def _newest_first(tags: list[JsonDoc]) -> list[JsonDoc]:
    return sorted(tags, key=lambda d: str(d.get("created_at", "")), reverse=True)


def run_summary(doc: JsonDoc, tags: list[str], now: float) -> RunSummary:
    """A run as `dstack ps` shows it, from its document."""
    start = doc.get("started_at") or doc.get("submitted_at")
    duration = round(elapsed_s(start, doc.get("finished_at"), now), 1) if start else None
    finished = doc.get("status") in _FINAL
    host = (doc.get("instance") or {}).get("public_ip")
    apps = [] if finished else [public_url(str(a["url"]), host) for a in doc.get("apps") or []]
    job = doc.get("job") or {}
    return {
        "run": doc.get("name"), "workflow": doc.get("workflow") or "",
        "project": doc.get("project"), "owner": doc.get("owner"),
        "provider": doc.get("provider"), "status": doc.get("status"),
        "submitted": doc.get("submitted_at"), "duration": duration,
        "backend": doc.get("backend"), "tags": tags,
        "artifacts": [a["path"] for a in job.get("artifacts") or []], "apps": apps,
        "exit_code": doc.get("exit_code"), "message": doc.get("message"),
        "cost": run_cost(doc, now),
    }

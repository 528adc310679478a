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

_FINAL = frozenset(s.value for s in TERMINAL)
"""The statuses of a finished run, as its document writes them."""
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


_SECTIONS = ("tags", "runs")
"""The cache's large parts, each written on a line of its own in this order (the file is still
one JSON document): a command parses only the parts it reads (`tags list` not the runs)."""
_Head = dict[str, object]
"""The cache file's small part: `version`, `store`, `tags_at` (the tags folder's token when
the tags were listed; None: the store has none), `runs_at` (the runs folder's, when the runs
were listed), `unsettled` (then the names of the runs not settled) and `settled`, the names of
the runs the cache holds."""
_KEEP = object()
"""`_save`: a head field as the kept cache has it."""


class _File:
    """The cache file as read: its head at once, each section (settled runs with their
    `LISTED` fields, tag entries) parsed the first time it is read."""

    def __init__(self, head: _Head, raw: dict[str, bytes],
                 parsed: dict[str, dict[str, object]], *, relayout: bool = False) -> None:
        self.head = head
        self._raw = raw
        self._parsed = parsed
        self.relayout = relayout
        """Written by an older dstack (on one line, or without `settled`): to be written
        again."""

    def section(self, name: str) -> dict[str, object]:
        """The section `name` (empty when missing). One that does not parse is empty, and the
        tags are then listed again (`tags_at` forgotten)."""
        if name not in self._parsed:
            raw = self._raw.pop(name, b"{}")
            try:
                with no_gc():
                    doc = json.loads(raw)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):  # listed again: the tags, the runs
                doc, self.head["tags_at"] = {}, None
                self.head.pop("settled", None)
            self._parsed[name] = doc
        return self._parsed[name]

    def settled_names(self) -> set[str]:
        """The runs the cache holds (all settled): told by the head, without the runs."""
        names = self.head.get("settled")
        if "runs" in self._parsed or not isinstance(names, list):
            return set(self.section("runs"))
        return set(names)

    def but(self, head: _Head, sections: dict[str, dict[str, object]]) -> _File:
        """This file with another head and these sections."""
        return _File(head, {n: r for n, r in self._raw.items() if n not in sections},
                     {**{n: d for n, d in self._parsed.items() if n not in sections},
                      **sections})

    def text(self, name: str) -> bytes:
        """The section `name` as JSON: as read when it was not parsed."""
        raw = self._raw.get(name)
        if raw is not None:
            return raw
        return json.dumps(self._parsed.get(name, {}), separators=(",", ":")).encode()


def _empty() -> _File:
    return _File({}, {}, {})


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


_loaded: dict[Path, _File] = {}


def settled(doc: Mapping[str, object]) -> bool:
    """A run document that will not change any more."""
    return doc.get("status") in _FINAL and bool(doc.get("torn_down"))


@contextmanager
def no_gc() -> Iterator[None]:
    """The garbage collector paused: parsing tens of thousands of documents makes no cycles,
    and collections while they pile up would add about a third to the time."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _read(path: Path) -> _File:
    """The cache file at `path` (empty when missing, unreadable or of another version): the
    sections of one that `_save` wrote are left unparsed; one of another layout is parsed
    whole."""
    try:
        data = path.read_bytes()
    except OSError:
        return _empty()
    lines = data.split(b"\n")
    prefixes = [b'"%s":' % name.encode() for name in _SECTIONS]
    if [line[:len(p)] for line, p in zip(lines[1:], prefixes, strict=False)] == prefixes and \
            [line[-1:] for line in lines] == [b","] * len(_SECTIONS) + [b"}"]:
        try:
            head = json.loads(lines[0][:-1] + b"}")
        except ValueError:
            head = None
        raw = {name: line[len(name) + 3:-1] for name, line in zip(_SECTIONS, lines[1:],
                                                                  strict=True)}
        parsed: dict[str, dict[str, object]] = {}
    else:
        try:
            with no_gc():
                head = json.loads(data)
        except ValueError:
            head = None
        raw, parsed = {}, {}
        if isinstance(head, dict):
            parsed = {name: head.pop(name) for name in _SECTIONS
                      if isinstance(head.get(name), dict)}
    if not isinstance(head, dict) or head.get("version") != CACHE_VERSION:
        return _empty()
    return _File(head, raw, parsed, relayout=not raw or not isinstance(head.get("settled"), list))


def _load(path: Path | None, store: Store) -> _File:
    """The cache of `store` (empty when missing, unreadable or of another store)."""
    if path is None:
        return _empty()
    if path not in _loaded:
        _loaded[path] = _read(path)
    loaded = _loaded[path]
    return loaded if loaded.head.get("store") == store.url else _empty()


def _save(path: Path | None, store: Store, kept: _File, tags_at: object, *,
          runs_at: object = _KEEP, unsettled: object = _KEEP,
          **sections: dict[str, object]) -> None:
    """Write the cache: `sections` new, the others as in `kept`; the runs folder's token
    and the unsettled runs' names given, else as in `kept`."""
    if path is None:
        return
    runs = sections["runs"] if "runs" in sections else kept.settled_names()
    head: _Head = {"version": CACHE_VERSION, "store": store.url, "tags_at": tags_at,
                   "runs_at": kept.head.get("runs_at") if runs_at is _KEEP else runs_at,
                   "unsettled": kept.head.get("unsettled") if unsettled is _KEEP else unsettled,
                   "settled": list(runs)}
    text = json.dumps(head, separators=(",", ":")).encode()[:-1]
    for name in _SECTIONS:
        body = json.dumps(sections[name], separators=(",", ":")).encode() \
            if name in sections else kept.text(name)
        text += b',\n"%s":%s' % (name.encode(), body)
    write_private(path, text + b"}")
    _loaded[path] = kept.but(head, sections)


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
    docs = _current_runs(store, cache, settled_too=False).values()
    return _newest_runs([d for d in docs if not settled(d)])


def _newest_runs(docs: list[JsonDoc]) -> list[JsonDoc]:
    return sorted(docs, key=lambda d: str(d.get("submitted_at", "")), reverse=True)


def _current_runs(store: Store, cache: Path | None, *,
                  settled_too: bool = True) -> dict[str, JsonDoc]:
    """Run name → its document, settled ones from the cache; without `settled_too`, only the
    runs the cache does not hold (its runs are then not even parsed, unless it changes). The
    cache is saved if it changed."""
    whole = _load(cache, store)
    cached = cast("dict[str, JsonDoc]", whole.section("runs")) if settled_too else None
    known = whole.settled_names()
    at = store.folder_version(RUNS) if cache is not None else None  # before it is listed
    names = _run_names(store, whole, known, at)
    fresh: dict[str, JsonDoc] = {}
    new: dict[str, JsonDoc] = {}
    kept = 0
    for name in names:
        if name in known:
            kept += 1
            if cached is not None:
                fresh[name] = cached[name]
            continue
        try:
            doc = store.get_json(run_key(name))
        except (NotFoundError, StoreError):
            continue
        if cache is not None and settled(doc):
            doc = new[name] = _listed(doc)
        fresh[name] = doc
    unsettled = [n for n in names if n not in known and n not in new]
    if new or whole.relayout or kept != len(known):
        runs = cast("dict[str, JsonDoc]", whole.section("runs"))
        _save(cache, store, whole, whole.head.get("tags_at"), runs_at=at, unsettled=unsettled,
              runs={n: d for n in names
                    if (d := runs.get(n) if n in known else new.get(n)) is not None})
    elif at is not None and (at != whole.head.get("runs_at") or
                             unsettled != whole.head.get("unsettled")):
        _save(cache, store, whole, whole.head.get("tags_at"), runs_at=at, unsettled=unsettled)
    return fresh


def _run_names(store: Store, whole: _File, known: set[str], at: str | None) -> list[str]:
    """The names of the runs in the store, sorted: from the cache's head while the runs
    folder's token (`at`) is the one the head was written with (no run was created or
    removed since), else listed."""
    unsettled = whole.head.get("unsettled")
    if at is None or whole.head.get("runs_at") != at or not isinstance(unsettled, list):
        return store.list_dirs(RUNS)
    return sorted([*known, *map(str, unsettled)])


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
    cached = cast("dict[str, _TagEntry]", whole.section("tags"))
    at = store.folder_version(TAGS) if cache is not None else None  # before it is listed
    if at is not None and whole.head.get("tags_at") == at:
        return _newest_first([e["doc"] for e in cached.values()])
    fresh: dict[str, _TagEntry] = {}
    dirty = at != whole.head.get("tags_at")
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
        _save(cache, store, whole, at, tags=cast("dict[str, object]", fresh))
    return _newest_first([e["doc"] for e in fresh.values()])


def _newest_first(tags: list[JsonDoc]) -> list[JsonDoc]:
    return sorted(tags, key=lambda d: str(d.get("created_at", "")), reverse=True)


def run_summary(doc: JsonDoc, tags: list[str], now: float) -> RunSummary:
    """A run as `dstack ps` shows it, from its document."""
    get = doc.get  # called for every listed run: each lookup counts
    start = get("started_at") or get("submitted_at")
    duration = round(elapsed_s(start, get("finished_at"), now), 1) if start else None
    status = get("status")
    if status in _FINAL:
        apps = []
    else:
        host = (get("instance") or {}).get("public_ip")
        apps = [public_url(str(a["url"]), host) for a in get("apps") or []]
    job = get("job") or {}
    return {
        "run": get("name"), "workflow": get("workflow") or "",
        "project": get("project"), "owner": get("owner"),
        "provider": get("provider"), "status": status,
        "submitted": get("submitted_at"), "duration": duration,
        "backend": get("backend"), "tags": tags,
        "artifacts": [a["path"] for a in job.get("artifacts") or []], "apps": apps,
        "exit_code": get("exit_code"), "message": get("message"),
        "cost": run_cost(doc, now) if get("billing") else None,
    }

"""The listing cache (`dstack.run.listing`): a settled run is read once and then listed from
the cache; a run still in progress, a changed tag, a deleted run or tag are read from the
store every time; a cache of another store or version, or an unreadable one, is rebuilt; a
tags folder that did not change is not listed, and a cache with nothing new is not written.
And which runs `dstack ps` shows (`shown_runs`)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from dstack.run import listing
from dstack.run.listing import (
    CACHE_VERSION,
    LISTED,
    run_docs,
    shown_runs,
    tag_docs,
    unsettled_docs,
)
from dstack.run.tags import list_tags, tag_dumps, tag_rows
from dstack.store.base import JsonDoc
from dstack.store.keys import RUNS, TAGS, run_key, tag_key
from dstack.store.local import LocalStore


class CountingStore(LocalStore):
    """A folder store that remembers which documents were read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.read: list[str] = []

    def get_json(self, key: str) -> JsonDoc:
        self.read.append(key)
        return super().get_json(key)


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: nothing of the cache loaded yet."""
    monkeypatch.setattr(listing, "_loaded", {})


def new_process() -> None:
    listing._loaded.clear()


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    return CountingStore(tmp_path / "store")


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "home" / "cache" / "listing-test.json"


def put_run(store: LocalStore, name: str, status: str = "done", torn_down: bool = True,
            submitted: str = "2024-01-01T00:00:00+00:00", **fields: Any) -> None:
    store.put_json(run_key(name), {
        "name": name, "workflow": "train", "provider": "bash", "status": status,
        "submitted_at": submitted, "torn_down": torn_down, "backend": "local",
        "job": {"provider": "bash", "artifacts": [{"path": "out", "mount": False}]},
        "spec_only_field": "not listed", **fields})


def by_name(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in docs}


def test_a_settled_run_is_read_once_and_then_listed_from_the_cache(
        store: CountingStore, cache: Path) -> None:
    put_run(store, "done-1")
    first = by_name(run_docs(store, cache))["done-1"]
    assert set(first) == {*LISTED, "job"}  # listed with the fields the cache keeps
    assert store.read == [run_key("done-1")]
    saved = json.loads(cache.read_text())
    assert saved["version"] == CACHE_VERSION and saved["store"] == store.url
    assert set(saved["runs"]["done-1"]) == {*LISTED, "job"}
    assert saved["runs"]["done-1"]["job"] == {"artifacts": [{"path": "out"}]}
    for _ in range(2):  # in this process, and in the next one (from the file)
        store.read.clear()
        docs = run_docs(store, cache)
        assert store.read == [] and by_name(docs)["done-1"]["workflow"] == "train"
        new_process()


def test_a_run_in_progress_is_read_every_time_until_it_settles(
        store: CountingStore, cache: Path) -> None:
    put_run(store, "run-1", status="running", torn_down=False)
    assert by_name(run_docs(store, cache))["run-1"]["status"] == "running"
    assert not cache.exists()  # nothing settled: nothing to cache
    put_run(store, "run-1", status="done", torn_down=False)  # finished, stack still up
    assert by_name(run_docs(store, cache))["run-1"]["status"] == "done"
    store.read.clear()
    run_docs(store, cache)
    assert store.read == [run_key("run-1")]
    put_run(store, "run-1", status="done", torn_down=True)
    run_docs(store, cache)
    store.read.clear()
    assert by_name(run_docs(store, cache))["run-1"]["torn_down"] is True
    assert store.read == []


def test_a_run_removed_from_the_store_leaves_the_listing_and_the_cache(
        store: CountingStore, cache: Path) -> None:
    put_run(store, "done-1")
    put_run(store, "done-2")
    run_docs(store, cache)
    store.delete_prefix("runs/done-1/")
    assert list(by_name(run_docs(store, cache))) == ["done-2"]
    assert list(json.loads(cache.read_text())["runs"]) == ["done-2"]


@pytest.mark.parametrize("spoil", ["other store", "other version", "unreadable"])
def test_a_cache_that_does_not_fit_is_rebuilt(spoil: str, store: CountingStore,
                                             cache: Path) -> None:
    put_run(store, "done-1")
    run_docs(store, cache)
    doc = json.loads(cache.read_text())
    doc["runs"]["done-1"]["workflow"] = "stale"
    if spoil == "other store":
        cache.write_text(json.dumps({**doc, "store": "file:///elsewhere"}))
    elif spoil == "other version":
        cache.write_text(json.dumps({**doc, "version": CACHE_VERSION - 1}))
    else:
        cache.write_text("{not json")
    new_process()
    store.read.clear()
    assert by_name(run_docs(store, cache))["done-1"]["workflow"] == "train"
    assert store.read == [run_key("done-1")]
    assert json.loads(cache.read_text())["store"] == store.url


def test_without_a_cache_every_run_is_read_whole(store: CountingStore) -> None:
    put_run(store, "done-1")
    for _ in range(2):
        assert by_name(run_docs(store))["done-1"]["spec_only_field"] == "not listed"
    assert store.read == [run_key("done-1")] * 2


def test_runs_are_listed_newest_first(store: CountingStore, cache: Path) -> None:
    put_run(store, "a-1", submitted="2024-01-02T00:00:00+00:00")
    put_run(store, "b-1", submitted="2024-01-03T00:00:00+00:00", status="running",
            torn_down=False)
    put_run(store, "c-1", submitted="2024-01-01T00:00:00+00:00")
    assert [d["name"] for d in run_docs(store, cache)] == ["b-1", "a-1", "c-1"]


def test_a_tag_is_read_again_only_when_it_changed(store: CountingStore, cache: Path) -> None:
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-1", "created_at": "1"})
    store.put_json(tag_key("v2"), {"name": "v2", "run": "done-2", "created_at": "2"})
    assert [t["name"] for t in tag_docs(store, cache)] == ["v2", "v1"]
    new_process()
    store.read.clear()
    assert len(tag_docs(store, cache)) == 2 and store.read == []
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-3", "created_at": "1"})
    store.delete(tag_key("v2"))
    assert tag_docs(store, cache) == [{"name": "v1", "run": "done-3", "created_at": "1"}]
    assert store.read == [tag_key("v1")]
    assert list(json.loads(cache.read_text())["tags"]) == [tag_key("v1")]


def test_runs_and_tags_share_one_cache_file(store: CountingStore, cache: Path) -> None:
    put_run(store, "done-1")
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-1", "created_at": "1"})
    run_docs(store, cache)
    tag_docs(store, cache)
    new_process()
    store.read.clear()
    run_docs(store, cache)
    tag_docs(store, cache)
    assert store.read == []


# -- what `dstack ps` shows -------------------------------------------------------------------


def docs_of(*specs: tuple[str, str, str | None]) -> list[dict[str, Any]]:
    return [{"name": n, "status": s, "project": p} for n, s, p in specs]


def test_ps_shows_this_projects_runs_unless_asked_for_all() -> None:
    docs = docs_of(("a-1", "done", "git@x:me/a"), ("b-1", "done", "git@x:me/b"),
                   ("old-1", "done", None))
    assert [d["name"] for d in shown_runs(docs, "git@x:me/a")] == ["a-1"]
    assert [d["name"] for d in shown_runs(docs, None)] == ["old-1"]
    assert shown_runs(docs, "elsewhere", all_projects=True) == docs


def test_ps_shows_unfinished_runs_and_the_newest_finished_ones() -> None:
    finished = [(f"done-{i}", "done", "p") for i in range(15)]
    docs = docs_of(*finished[:12], ("running-1", "running", "p"), *finished[12:])
    shown = [d["name"] for d in shown_runs(docs, "p")]
    assert shown == [f"done-{i}" for i in range(listing.RECENT)] + ["running-1"]
    assert shown_runs(docs, "p", all_runs=True) == docs


# -- what the cache spares: listing an unchanged tags folder, writing an unchanged cache -------


def age(folder: Path, seconds: int = 60) -> None:
    """Set the folder's mtime in the past, as if it had settled long ago."""
    past = time.time() - seconds
    os.utime(folder, (past, past))


def test_a_folder_version_is_told_only_once_the_folder_settled(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    assert store.folder_version(TAGS) is None  # no folder yet
    store.put_json(tag_key("v1"), {"name": "v1"})
    assert store.folder_version(TAGS) is None  # written just now: the same tick may follow
    age(tmp_path / "store" / "tags")
    settled_at = store.folder_version(TAGS)
    assert settled_at is not None and store.folder_version(TAGS) == settled_at
    store.put_json(tag_key("v1"), {"name": "v1", "run": "x"})  # a rewrite renames a file in
    age(tmp_path / "store" / "tags", 30)
    assert store.folder_version(TAGS) not in (None, settled_at)
    store.delete(tag_key("v1"))
    age(tmp_path / "store" / "tags", 20)
    assert store.folder_version(TAGS) not in (None, settled_at)


def test_tags_are_not_listed_while_their_folder_is_unchanged(
        store: CountingStore, cache: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-1", "created_at": "1"})
    age(tmp_path / "store" / "tags")
    assert [t["run"] for t in tag_docs(store, cache)] == ["done-1"]
    new_process()
    listed: list[str] = []
    original = store.list_versions

    def list_versions(prefix: str) -> dict[str, str]:
        listed.append(prefix)
        return original(prefix)

    monkeypatch.setattr(store, "list_versions", list_versions)
    store.read.clear()
    assert [t["run"] for t in tag_docs(store, cache)] == ["done-1"]
    assert listed == [] and store.read == []
    # Another machine rewrites the tag: the folder moved, so it is listed and read again.
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-2", "created_at": "1"})
    age(tmp_path / "store" / "tags", 30)
    new_process()
    assert [t["run"] for t in tag_docs(store, cache)] == ["done-2"]
    assert listed == [TAGS] and store.read == [tag_key("v1")]


def test_a_recently_changed_tags_folder_is_listed_every_time(
        store: CountingStore, cache: Path) -> None:
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-1", "created_at": "1"})
    tag_docs(store, cache)
    assert json.loads(cache.read_text())["tags_at"] is None
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-2", "created_at": "1"})
    assert [t["run"] for t in tag_docs(store, cache)] == ["done-2"]


def test_a_cache_with_nothing_new_is_not_written_again(
        store: CountingStore, cache: Path, tmp_path: Path) -> None:
    put_run(store, "done-1")
    put_run(store, "run-1", status="running", torn_down=False)
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-1", "created_at": "1"})
    age(tmp_path / "store" / "tags")
    run_docs(store, cache)
    tag_docs(store, cache)
    before = cache.stat()
    for _ in range(2):
        new_process()
        run_docs(store, cache)
        tag_docs(store, cache)
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _counting_list_dirs(store: LocalStore, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    listed: list[str] = []
    original = store.list_dirs

    def list_dirs(prefix: str) -> list[str]:
        listed.append(prefix)
        return original(prefix)

    monkeypatch.setattr(store, "list_dirs", list_dirs)
    return listed


def test_runs_are_not_listed_while_their_folder_is_unchanged(
        store: CountingStore, cache: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    put_run(store, "done-1")
    put_run(store, "run-1", status="running", torn_down=False,
            submitted="2024-01-02T00:00:00+00:00")
    age(tmp_path / "store" / "runs")
    assert [d["name"] for d in run_docs(store, cache)] == ["run-1", "done-1"]
    listed = _counting_list_dirs(store, monkeypatch)
    for _ in range(2):
        new_process()
        store.read.clear()
        assert [d["name"] for d in run_docs(store, cache)] == ["run-1", "done-1"]
        assert [d["name"] for d in unsettled_docs(store, cache)] == ["run-1"]
        assert listed == [] and store.read == [run_key("run-1")] * 2  # still read each time
    # The unsettled run changes inside its own folder: read, and it settles into the cache.
    put_run(store, "run-1", submitted="2024-01-02T00:00:00+00:00")
    new_process()
    assert by_name(run_docs(store, cache))["run-1"]["status"] == "done"
    assert listed == []
    # A run created (another machine, a moment ago) or removed moves the folder: listed.
    put_run(store, "new-1", status="running", torn_down=False,
            submitted="2024-01-03T00:00:00+00:00")
    new_process()
    assert [d["name"] for d in run_docs(store, cache)] == ["new-1", "run-1", "done-1"]
    assert listed == [RUNS]
    store.delete_prefix("runs/done-1/")
    age(tmp_path / "store" / "runs", 30)
    new_process()
    assert [d["name"] for d in run_docs(store, cache)] == ["new-1", "run-1"]
    assert listed == [RUNS, RUNS]
    new_process()
    assert [d["name"] for d in unsettled_docs(store, cache)] == ["new-1"]
    assert listed == [RUNS, RUNS]  # the last listing's token was kept


def test_a_recently_changed_runs_folder_is_listed_and_not_written_for_it(
        store: CountingStore, cache: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    put_run(store, "done-1")
    age(tmp_path / "store" / "runs")
    run_docs(store, cache)
    put_run(store, "run-1", status="running", torn_down=False)  # the folder moved just now
    listed = _counting_list_dirs(store, monkeypatch)
    before = cache.stat()
    for _ in range(2):
        new_process()
        assert set(by_name(run_docs(store, cache))) == {"done-1", "run-1"}
    assert listed == [RUNS, RUNS]
    after = cache.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_housekeeping_reads_only_the_runs_that_may_still_change(
        store: CountingStore, cache: Path) -> None:
    put_run(store, "done-1")
    put_run(store, "stack-up-1", status="done", torn_down=False)
    put_run(store, "run-1", status="running", torn_down=False,
            submitted="2024-01-02T00:00:00+00:00")
    run_docs(store, cache)
    new_process()
    store.read.clear()
    assert [d["name"] for d in unsettled_docs(store, cache)] == ["run-1", "stack-up-1"]
    assert sorted(store.read) == [run_key("run-1"), run_key("stack-up-1")]
    # The run's document changes (its stack is torn down): it settles into the cache.
    put_run(store, "stack-up-1", status="done", torn_down=True)
    assert [d["name"] for d in unsettled_docs(store, cache)] == ["run-1"]
    assert "stack-up-1" in json.loads(cache.read_text())["runs"]


def test_tags_are_validated_together_and_an_invalid_one_is_left_out(
        store: CountingStore, cache: Path) -> None:
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-1", "created_at": "1"})
    store.put_json(tag_key("v2"), {"name": "v2", "run": "done-2", "created_at": "2"})
    assert [t.name for t in list_tags(store, cache)] == ["v2", "v1"]
    assert tag_dumps(list_tags(store, cache)) == \
        [t.model_dump(mode="json") for t in list_tags(store, cache)]
    store.put_json(tag_key("bad"), {"name": "bad", "created_at": "3", "unknown": 1})
    assert [t.name for t in list_tags(store, cache)] == ["v2", "v1"]


@pytest.mark.parametrize("doc", [
    {"name": "v3", "run": "done-3", "created_at": "3", "version": 1, "workflow": "train"},
    {"name": "v3", "run": "done-3", "created_at": "3"},  # defaults filled in
    {"name": "v3", "run": "done-3", "created_at": "3", "version": "2"},  # pydantic coerces
    {"name": "v3", "run": "done-3", "created_at": "3", "version": True},
    {"name": "v3", "run": "done-3", "created_at": "3", "workflow": 7},  # not a tag
    {"name": "v3", "run": "done-3", "created_at": "3", "unknown": 1},
    {"name": "v3", "created_at": "3"},
])
def test_tag_rows_are_the_dumps_of_the_valid_tags(doc: JsonDoc, store: CountingStore,
                                                  cache: Path) -> None:
    store.put_json(tag_key("v1"), {"name": "v1", "run": "done-1", "created_at": "1"})
    store.put_json(tag_key("v3"), doc)
    rows = tag_rows(store, cache)
    assert rows == tag_dumps(list_tags(store, cache))
    assert [list(r) for r in rows] == [["version", "name", "run", "workflow", "created_at"]] * \
        len(rows)


def test_a_cache_of_the_older_layout_is_used_and_written_again_in_sections(
        store: CountingStore, cache: Path) -> None:
    put_run(store, "done-1")
    run_docs(store, cache)
    doc = json.loads(cache.read_text())
    del doc["settled"]
    cache.write_text(json.dumps(doc))  # one line, as dstack wrote it before sections
    new_process()
    store.read.clear()
    assert list(by_name(run_docs(store, cache))) == ["done-1"]
    assert store.read == []  # the settled run came from the older cache
    lines = cache.read_text().split("\n")
    assert [line.split(":", 1)[0] for line in lines[1:]] == ['"tags"', '"runs"']
    assert json.loads(cache.read_text())["settled"] == ["done-1"]


def test_a_spoiled_runs_section_is_read_again_from_the_store(
        store: CountingStore, cache: Path) -> None:
    put_run(store, "done-1")
    put_run(store, "done-2")
    run_docs(store, cache)
    head, tags, _runs = cache.read_text().split("\n")
    cache.write_text("\n".join([head, tags, '"runs":{not json}']))
    new_process()
    store.read.clear()
    assert sorted(by_name(run_docs(store, cache))) == ["done-1", "done-2"]
    assert sorted(store.read) == [run_key("done-1"), run_key("done-2")]
    assert sorted(json.loads(cache.read_text())["runs"]) == ["done-1", "done-2"]

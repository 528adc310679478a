"""The listing cache (`dstack.run.listing`): a settled run is read once and then listed from
the cache; a run still in progress, a changed tag, a deleted run or tag are read from the
store every time; a cache of another store or version, or an unreadable one, is rebuilt.
And which runs `dstack ps` shows (`shown_runs`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dstack.run import listing
from dstack.run.listing import CACHE_VERSION, LISTED, run_docs, shown_runs, tag_docs
from dstack.store.base import JsonDoc
from dstack.store.keys import run_key, tag_key
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

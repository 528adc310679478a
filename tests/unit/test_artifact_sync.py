"""Artifact sync to a folder store: the batches of uploads (one folder each, largest first,
folders in turn), what a missing source is, and files that arrive whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dstack.errors import StoreError
from dstack.store.artifact_sync import BATCH_BYTES, ArtifactSync, Change, _batches
from dstack.store.local import LocalStore


def _change(key: str, size: int) -> Change:
    return key, Path(key), (size, 0)


def _keys(batches: list[list[Change]]) -> list[list[str]]:
    return [[key for key, _path, _sig in batch] for batch in batches]


def test_uploads_go_in_batches_of_one_folder_largest_first_folders_in_turn() -> None:
    todo = [_change(f"a/{i}", 10) for i in range(70)] + [
        _change(f"b/{i}", 10) for i in range(40)] + [_change("top", 1 << 30)]
    batches = _batches(todo, threads=2)
    assert _keys(batches)[0] == ["top"]  # the longest copy starts first
    assert [len(b) for b in batches] == [1, 32, 32, 32, 8, 6]
    assert [b[0][0][0] for b in batches[1:4]] == ["a", "b", "a"]  # another folder each time
    assert _keys(batches)[1][:2] == ["a/0", "a/1"]
    assert _keys(_batches([_change("c/small", 1), _change("c/big", 9)], threads=1)) == [
        ["c/big", "c/small"]]
    assert sorted(k for keys in _keys(batches) for k in keys) == sorted(k for k, _p, _s in todo)
    assert _batches([], threads=8) == []


def test_few_files_are_spread_over_the_threads() -> None:
    todo = [_change(f"out/{i}", 100) for i in range(20)]
    assert [len(b) for b in _batches(todo, threads=8)] == [3, 3, 3, 3, 3, 3, 2]


def test_a_batch_holds_at_most_batch_bytes_unless_a_file_is_larger() -> None:
    todo = [_change("out/huge", BATCH_BYTES * 3)] + [
        _change(f"out/{i}", BATCH_BYTES // 3) for i in range(7)]
    assert [len(b) for b in _batches(todo, threads=1)] == [1, 3, 3, 1]


def test_a_sync_copies_every_file_whole_and_leaves_no_temp(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    for folder in ("out/a", "out/b", "out/c"):
        (repo / folder).mkdir(parents=True)
        for i in range(7):
            (repo / folder / f"f{i}").write_bytes(os.urandom(1000 * i))
    (repo / "out" / "big").write_bytes(os.urandom(3 << 20))
    store = LocalStore(tmp_path / "store")
    sync = ArtifactSync(store, "r", repo, ["out"])
    assert sync.sync() == 22 and sync.sync() == 0
    for path in (repo / "out").rglob("*"):
        if path.is_file():
            key = f"runs/r/artifacts/{path.relative_to(repo).as_posix()}"
            assert store.get_bytes(key) == path.read_bytes()
    assert not [p for p in (tmp_path / "store").rglob(".*") if p.is_file()]


def test_put_file_leaves_a_missing_source_to_the_caller(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    (tmp_path / "dir").mkdir()
    for src in (tmp_path / "missing", tmp_path / "dir"):
        with pytest.raises(FileNotFoundError):
            store.put_file("runs/r/artifacts/x", src)
    assert store.list("runs/") == []


def test_put_file_into_a_store_gone_from_under_it_is_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "src").write_bytes(b"x")
    store = LocalStore(tmp_path / "store")
    store.put_file("runs/r/artifacts/x", tmp_path / "src")
    (tmp_path / "store" / "runs" / "r" / "artifacts" / "x").unlink()
    (tmp_path / "store" / "runs" / "r" / "artifacts").rmdir()  # its folder was made once
    with pytest.raises(StoreError):
        store.put_file("runs/r/artifacts/x", tmp_path / "src")

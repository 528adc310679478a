"""Files that appear whole (`dstack.files`): the one temp-name pattern, replacing, creating
once, and nothing left behind when a write fails."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from dstack.files import create_whole, replacing, temp_beside, write_whole
from dstack.store.local import LocalStore


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_temp_name_is_hidden_beside_its_target_and_fresh(tmp_path: Path) -> None:
    target = tmp_path / "run.json"
    names = {temp_beside(target) for _ in range(50)}
    assert len(names) == 50
    for name in names:
        assert name.parent == tmp_path and name.name.startswith(".run.json.")
        assert name.name.endswith(".tmp")
    assert not list(tmp_path.iterdir())  # only names: nothing is created


def test_write_whole_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "doc"
    write_whole(target, b"old")
    write_whole(target, b"new", mode=0o600, sync=True)
    assert target.read_bytes() == b"new" and _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["doc"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "doc"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), replacing(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["doc"]


def test_a_write_into_a_missing_folder_fails_cleanly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_whole(tmp_path / "missing" / "doc", b"x")
    assert not list(tmp_path.iterdir())


def test_create_whole_writes_only_when_nothing_is_there(tmp_path: Path) -> None:
    target = tmp_path / "claim"
    assert create_whole(target, b"first", mode=0o600)
    assert not create_whole(target, b"second")
    assert target.read_bytes() == b"first" and _mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["claim"]


def test_exactly_one_concurrent_creator_wins(tmp_path: Path) -> None:
    target = tmp_path / "claim"
    won: list[int] = []
    start = threading.Barrier(8)

    def claim(i: int) -> None:
        start.wait()
        if create_whole(target, f"{i}".encode()):
            won.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and target.read_bytes() == str(won[0]).encode()
    assert [p.name for p in tmp_path.iterdir()] == ["claim"]


def test_a_stores_listing_never_shows_a_write_in_progress(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("runs/r/run.json", b"{}")
    temp_beside(tmp_path / "runs" / "r" / "run.json").write_bytes(b"{")
    assert store.list("runs/") == ["runs/r/run.json"]

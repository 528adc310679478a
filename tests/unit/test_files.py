"""Files that appear whole (`dstack.files`): the one temp-name pattern, replacing, copying,
creating once, and nothing left behind when a write fails."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from dstack.files import copy_whole, create_whole, replacing, temp_beside, write_whole
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


def test_copy_whole_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    src, target = tmp_path / "src", tmp_path / "out" / "copy"
    target.parent.mkdir()
    target.write_bytes(b"old")
    src.write_bytes(b"x" * 100_000 + b"end")
    copy_whole(src, target)
    assert target.read_bytes() == src.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["copy"]
    (tmp_path / "empty").write_bytes(b"")
    copy_whole(tmp_path / "empty", target)
    assert target.read_bytes() == b""


def test_copy_whole_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")  # opened without blocking, then refused
    (tmp_path / "dir").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    for src in ("missing", "fifo", "dir"):
        with pytest.raises(FileNotFoundError) as caught:
            copy_whole(tmp_path / src, out / "copy")
        assert caught.value.filename == str(tmp_path / src)
    assert not list(out.iterdir())


@pytest.mark.parametrize("refused", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_copy_whole_goes_on_another_way_when_the_kernel_refuses(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: tuple[str, ...]) -> None:
    real = os.copy_file_range

    def half_then_refuse(src_fd: int, out_fd: int, count: int) -> int:
        if os.lseek(src_fd, 0, os.SEEK_CUR):
            raise OSError(errno.EXDEV, "cross-device")
        return real(src_fd, out_fd, 3000)

    def refuse(*_args: object) -> int:
        raise OSError(errno.EINVAL, "not here")

    monkeypatch.setattr(os, "copy_file_range", half_then_refuse)
    if "sendfile" in refused:
        monkeypatch.setattr(os, "sendfile", refuse)
    src = tmp_path / "src"
    src.write_bytes(bytes(range(256)) * 40_000)
    copy_whole(src, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == src.read_bytes()


def test_copy_whole_reads_a_file_whose_kernel_copy_yields_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "copy_file_range", lambda *_args: 0)  # as on /proc or /sys
    monkeypatch.setattr(os, "sendfile", lambda *_args: 0)
    src = tmp_path / "src"
    src.write_bytes(b"status: ok\n")
    copy_whole(src, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == b"status: ok\n"


def test_a_failed_copy_keeps_the_old_file_and_no_temp(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*_args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", full)
    (tmp_path / "src").write_bytes(b"new")
    out = tmp_path / "out"
    out.mkdir()
    (out / "copy").write_bytes(b"old")
    with pytest.raises(OSError) as caught:
        copy_whole(tmp_path / "src", out / "copy")
    assert caught.value.errno == errno.ENOSPC
    assert (out / "copy").read_bytes() == b"old" and [p.name for p in out.iterdir()] == ["copy"]

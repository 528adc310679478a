"""Repairs of Pulumi's file state backend after an engine died (`dstack.stacks.file_state`).

The files are laid out as the engine leaves them when killed at each step of saving a
checkpoint; `test_faults.py` shows on the real engine that such a stack is refused by Pulumi
before the repair and destroyed by dstack after it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from dstack.stacks.file_state import clear_stale_locks, repair_stack, state_folder, state_url

PROJECT = "dstack"


def checkpoint(*resources: str) -> bytes:
    return json.dumps({"version": 3, "checkpoint": {"stack": "organization/dstack/s", "latest": {
        "resources": [{"urn": f"urn:pulumi:s::dstack::{r}::x"} for r in resources]}}}).encode()


@pytest.fixture()
def state(tmp_path: Path) -> Path:
    (tmp_path / ".pulumi" / "stacks" / PROJECT).mkdir(parents=True)
    return tmp_path


def stacks(state: Path) -> Path:
    return state / ".pulumi" / "stacks" / PROJECT


def write(path: Path, data: bytes, age_s: float = 0.0) -> Path:
    path.write_bytes(data)
    if age_s:
        t = time.time() - age_s
        os.utime(path, (t, t))
    return path


ATTRS = b'{"user.content_type":"text/plain; charset=utf-8","md5":"AAAA"}'


def test_killed_between_sidecar_and_rename_commits_the_checkpoint_it_was_saving(
        state: Path) -> None:
    folder = stacks(state)
    current = write(folder / "s.json", checkpoint("Folder"), age_s=5)
    write(folder / "s.json.bak", checkpoint(), age_s=6)
    write(folder / "s.json.bak.attrs", ATTRS)
    write(folder / "s.json.attrs", b"")  # truncated by the rewrite, then the engine died
    tmp = write(folder / "s.json.18eb90867dfd7da7.tmp", checkpoint("Folder", "Runner"))
    done = repair_stack(state, PROJECT, "s")
    assert json.loads(current.read_bytes()) == json.loads(checkpoint("Folder", "Runner"))
    assert not tmp.exists() and not (folder / "s.json.attrs").exists()
    assert (folder / "s.json.bak.attrs").read_bytes() == ATTRS
    assert done == [f"committed the checkpoint {tmp.name} its engine was saving"]


def test_a_temp_checkpoint_cut_short_is_dropped_and_the_last_saved_one_kept(state: Path) -> None:
    folder = stacks(state)
    current = write(folder / "s.json", checkpoint("Folder"), age_s=5)
    write(folder / "s.json.attrs", ATTRS, age_s=5)
    whole = checkpoint("Folder", "Runner")
    tmp = write(folder / "s.json.00ff.tmp", whole[: len(whole) // 2])  # killed mid-write
    done = repair_stack(state, PROJECT, "s")
    assert current.read_bytes() == checkpoint("Folder")
    assert (folder / "s.json.attrs").read_bytes() == ATTRS
    assert not tmp.exists()
    assert done == [f"removed the unfinished checkpoint {tmp.name}"]


def test_only_the_newest_complete_temp_is_committed_and_older_ones_go(state: Path) -> None:
    folder = stacks(state)
    current = write(folder / "s.json", checkpoint("A"), age_s=10)
    stale = write(folder / "s.json.01.tmp", checkpoint("OLD"), age_s=20)  # older than current
    newest = write(folder / "s.json.03.tmp", checkpoint("A", "B", "C"), age_s=1)
    middle = write(folder / "s.json.02.tmp", checkpoint("A", "B"), age_s=2)
    repair_stack(state, PROJECT, "s")
    assert current.read_bytes() == checkpoint("A", "B", "C")
    assert not any(p.exists() for p in (stale, newest, middle))


def test_a_stack_file_that_does_not_parse_is_restored_from_its_backup(state: Path) -> None:
    folder = stacks(state)
    current = write(folder / "s.json", b'{"version": 3, "checkp')
    write(folder / "s.json.bak", checkpoint("Folder"))
    write(folder / "s.json.bak.attrs", b"{")
    done = repair_stack(state, PROJECT, "s")
    assert current.read_bytes() == checkpoint("Folder")
    assert not (folder / "s.json.bak.attrs").exists()
    assert done == ["removed the broken s.json.bak.attrs", "restored s.json from s.json.bak"]
    assert list(folder.glob(".s.json.restore-*")) == []


def test_a_sound_stack_is_left_as_it_is(state: Path) -> None:
    folder = stacks(state)
    files = {"s.json": checkpoint("Folder"), "s.json.attrs": ATTRS,
             "s.json.bak": checkpoint(), "s.json.bak.attrs": ATTRS,
             "other.json.1.tmp": checkpoint("X")}  # another stack's file is not touched
    for name, data in files.items():
        write(folder / name, data)
    assert repair_stack(state, PROJECT, "s") == []
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == files


def _lock(state: Path, stack: str, pid: int, host: str | None = None) -> Path:
    folder = state / ".pulumi" / "locks" / "organization" / PROJECT / stack
    folder.mkdir(parents=True)
    lock = folder / "0b1c.json"
    lock.write_text(json.dumps({"pid": pid, "username": "u",
                                "hostname": host or socket.gethostname(),
                                "timestamp": "2026-01-01T00:00:00Z"}))
    write(Path(f"{lock}.attrs"), ATTRS)
    return lock


def test_clearing_a_dead_engines_lock_repairs_its_stack_first(state: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        folder = stacks(state)
        for stack in ("dead", "live", "elsewhere"):
            write(folder / f"{stack}.json", checkpoint("A"), age_s=5)
            write(folder / f"{stack}.json.attrs", b"")
            write(folder / f"{stack}.json.1.tmp", checkpoint("A", "B"))
        locks = {"dead": _lock(state, "dead", dead.pid),
                 "live": _lock(state, "live", live.pid),
                 "elsewhere": _lock(state, "elsewhere", dead.pid, host="another-host")}
        assert clear_stale_locks(state, PROJECT) == ["dead"]
    finally:
        live.kill()
        live.wait()
    assert not locks["dead"].exists() and not Path(f"{locks['dead']}.attrs").exists()
    assert locks["live"].exists() and locks["elsewhere"].exists()
    assert (folder / "dead.json").read_bytes() == checkpoint("A", "B")
    # A stack whose engine may still be saving is never touched.
    for stack in ("live", "elsewhere"):
        assert (folder / f"{stack}.json").read_bytes() == checkpoint("A")
        assert (folder / f"{stack}.json.1.tmp").exists()


@pytest.mark.parametrize(("given", "url", "folder"), [
    (None, "file:///h/state?metadata=skip", "/h/state"),
    ("file:///srv/st", "file:///srv/st?metadata=skip", "/srv/st"),
    ("file:///srv/st?no_tmp_dir=false", "file:///srv/st?no_tmp_dir=false&metadata=skip",
     "/srv/st"),
    ("file:///srv/st?metadata=", "file:///srv/st?metadata=", "/srv/st"),  # the user's choice
    ("s3://bucket/state?region=eu-west-1", "s3://bucket/state?region=eu-west-1", None),
])
def test_a_file_state_is_opened_without_sidecars(given: str | None, url: str,
                                                 folder: str | None) -> None:
    assert state_url(Path("/h"), given) == url
    assert state_folder(Path("/h"), given) == (Path(folder) if folder else None)


def test_a_file_state_under_the_user_home_is_found() -> None:
    assert state_folder(Path("/h"), "file://~/st") == Path.home() / "st"

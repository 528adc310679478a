"""The runner's log shipping (`dstack.sync.LogShipper`) into a store folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dstack.store import LocalStore
from dstack.sync import LogShipper, read_log_chunks


def chunks(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "runs" / "r" / "logs").glob("*.log"))


def test_output_after_a_quiet_spell_is_shipped_at_once_and_steady_output_in_chunks(
        tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    log = LogShipper(store, "r", eager_s=3600)
    log.write(b"first line\n")  # nothing shipped for an hour: this goes out now
    assert chunks(tmp_path) == ["00000000.log"]
    log.write(b"second\n")
    log.write(b"third\n")  # within eager_s of the last chunk: they wait for a flush
    assert chunks(tmp_path) == ["00000000.log"]
    log.flush()
    assert chunks(tmp_path) == ["00000000.log", "00000001.log"]
    assert read_log_chunks(store, "r") == (b"first line\nsecond\nthird\n", 2)


def test_the_first_output_ships_at_once_on_a_machine_booted_moments_ago(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "monotonic", lambda: 5.0)  # the clock counts from boot
    store = LocalStore(tmp_path)
    LogShipper(store, "r", eager_s=60).write(b"first line\n")
    assert chunks(tmp_path) == ["00000000.log"]


def test_without_eager_shipping_only_flush_ships(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    log = LogShipper(store, "r")
    log.write(b"a\n")
    assert not (tmp_path / "runs" / "r" / "logs").exists() or chunks(tmp_path) == []
    log.flush()
    log.flush()  # nothing new: no empty chunk
    assert read_log_chunks(store, "r") == (b"a\n", 1)


def test_a_store_that_refuses_keeps_the_output_for_the_next_flush(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    log = LogShipper(store, "r", eager_s=0)
    (tmp_path / "store" / "runs" / "r").mkdir(parents=True)
    (tmp_path / "store" / "runs" / "r" / "logs").write_text("a file, not a folder")
    log.write(b"kept\n")  # the eager put fails quietly
    (tmp_path / "store" / "runs" / "r" / "logs").unlink()
    log.flush()
    assert read_log_chunks(store, "r") == (b"kept\n", 1)

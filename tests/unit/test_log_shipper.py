"""The runner's log (`dstack.store.job_log`): shipping into a store folder, and the records that
keep the job's stdout, its stderr and dstack's own lines apart."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from dstack.store.job_log import (
    LogShipper,
    decode_chunk,
    encode_records,
    read_log_records,
    read_log_text,
)
from dstack.store.local import LocalStore


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
    assert read_log_records(store, "r") == ([("out", b"first line\nsecond\nthird\n")], 2)


def test_the_end_of_a_line_the_last_chunk_left_open_ships_at_once(tmp_path: Path) -> None:
    # An unbuffered print writes the text, then the newline: the line is not left waiting.
    store = LocalStore(tmp_path)
    log = LogShipper(store, "r", eager_s=3600)
    log.write(b"first line")
    log.write(b"\n")
    assert chunks(tmp_path) == ["00000000.log", "00000001.log"]
    log.write(b"more")
    log.write(b" output\n")  # the last chunk ended its line: this waits for a flush
    assert chunks(tmp_path) == ["00000000.log", "00000001.log"]
    log.write(b"progress 10%")
    log.flush()
    log.write(b"\rprogress 20%")  # no newline: a progress line ships with the steady output
    assert len(chunks(tmp_path)) == 3
    assert read_log_text(store, "r") == b"first line\nmore output\nprogress 10%"


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
    assert read_log_records(store, "r") == ([("out", b"a\n")], 1)


def test_a_store_that_refuses_keeps_the_output_for_the_next_flush(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    log = LogShipper(store, "r", eager_s=0)
    (tmp_path / "store" / "runs" / "r").mkdir(parents=True)
    (tmp_path / "store" / "runs" / "r" / "logs").write_text("a file, not a folder")
    log.write(b"kept\n")  # the eager put fails quietly
    log.write(b"oops\n", "err")
    (tmp_path / "store" / "runs" / "r" / "logs").unlink()
    log.flush()
    assert read_log_records(store, "r") == ([("out", b"kept\n"), ("err", b"oops\n")], 1)


def test_stdout_stderr_and_dstack_lines_keep_their_stream_and_order(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    log = LogShipper(store, "r", local_copy=tmp_path / "job.log")
    log.write(b"progress 50%")  # a partial line of the job
    log.say("r is running")
    log.write(b"Traceback\n", "err")
    log.write(b"more\n", "err")
    log.flush()
    log.write(b"\x1e not a record mark when the job writes it\n")
    log.flush()
    records, nxt = read_log_records(store, "r")
    assert nxt == 2
    assert records == [("out", b"progress 50%"), ("dstack", b"[dstack] r is running\n"),
                       ("err", b"Traceback\nmore\n"),
                       ("out", b"\x1e not a record mark when the job writes it\n")]
    # The local copy is one text where dstack's line starts a line of its own.
    assert (tmp_path / "job.log").read_bytes().startswith(
        b"progress 50%\n[dstack] r is running\nTraceback\n")
    assert read_log_text(store, "r").startswith(b"progress 50%[dstack] r is running\n")


def test_chunks_of_an_earlier_dstack_are_the_jobs_stdout(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    store.put_bytes("runs/r/logs/00000000.log", b"plain text\n")
    store.put_bytes("runs/r/logs/00000001.log", encode_records([("err", b"e\n")]))
    assert read_log_records(store, "r") == ([("out", b"plain text\n"), ("err", b"e\n")], 2)
    assert read_log_records(store, "r", start=1) == ([("err", b"e\n")], 2)


@pytest.mark.parametrize("data", [b"", b"x", b"\n", b"\x1e", bytes(range(256)) * 3])
def test_any_bytes_survive_a_round_trip(data: bytes) -> None:
    records = [("out", data), ("err", data), ("dstack", b"[dstack] x\n")]
    assert decode_chunk(encode_records(records)) == records  # type: ignore[arg-type]


def test_a_damaged_chunk_keeps_its_bytes() -> None:
    chunk = encode_records([("out", b"ok\n")]) + b"\x1eo999\ncut short"
    assert decode_chunk(chunk) == [("out", b"ok\n"), ("out", b"cut short")]

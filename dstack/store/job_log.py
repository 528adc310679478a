"""A run's log in the store: what the job wrote to stdout and stderr, and dstack's own lines.

The runner ships the log as numbered chunks (`runs/<run>/logs/<seq>.log`), which works the
same on a folder, S3 and GCS. A chunk is a sequence of records, each one stream's bytes:

    b"\\x1e" + stream letter (o: stdout, e: stderr, d: dstack) + length + b"\\n" + bytes

so a reader can send the job's stdout to stdout and everything else to stderr. A chunk that
does not start with the record mark (written by an earlier dstack) is all stdout.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from dstack.errors import NotFoundError, StoreError
from dstack.lines import LineKeeper, Target
from dstack.store.base import Store
from dstack.store.keys import LOG_SUFFIX, log_chunk_key, log_prefix
from dstack.store.secrets import mask

LOCAL_COPY: Target = (0, 0)
"""The one target of the runner's local copy of the log."""

Stream = Literal["out", "err", "dstack"]
"""Which stream a record belongs to: the job's stdout, the job's stderr, or dstack's lines."""

LogRecord = tuple[Stream, bytes]
WriteLog = Callable[[Stream, bytes], None]
"""Where a follower sends a run's log records."""

_MARK = b"\x1e"
_LETTER: dict[Stream, bytes] = {"out": b"o", "err": b"e", "dstack": b"d"}
_STREAM: dict[bytes, Stream] = {v: k for k, v in _LETTER.items()}


def encode_records(records: list[LogRecord]) -> bytes:
    """One chunk holding `records` in order."""
    out = bytearray()
    for stream, data in records:
        out += _MARK + _LETTER[stream] + str(len(data)).encode() + b"\n" + data
    return bytes(out)


def decode_chunk(chunk: bytes) -> list[LogRecord]:
    """The records of one chunk (a chunk without records is the job's stdout)."""
    if not chunk.startswith(_MARK):
        return [("out", chunk)] if chunk else []
    records: list[LogRecord] = []
    at = 0
    while at < len(chunk):
        end = chunk.find(b"\n", at)
        if chunk[at:at + 1] != _MARK or end < 0 or not chunk[at + 2:end].isdigit():
            records.append(("out", chunk[at:]))  # damaged: keep the bytes rather than lose them
            break
        stream = _STREAM.get(chunk[at + 1:at + 2], "out")
        size = int(chunk[at + 2:end])
        records.append((stream, chunk[end + 1:end + 1 + size]))
        at = end + 1 + size
    return records


def merge_records(records: list[LogRecord]) -> list[LogRecord]:
    """`records` with neighbours of the same stream joined."""
    out: list[LogRecord] = []
    for stream, data in records:
        if out and out[-1][0] == stream:
            out[-1] = (stream, out[-1][1] + data)
        elif data:
            out.append((stream, data))
    return out


def read_log_records(store: Store, run: str, start: int = 0) -> tuple[list[LogRecord], int]:
    """Log records of `run` from chunk `start` on, and the index of the next chunk."""
    keys = [k for k in store.list(log_prefix(run)) if k.endswith(LOG_SUFFIX)]
    records: list[LogRecord] = []
    n = start
    for key in keys[start:]:
        try:
            records += decode_chunk(store.get_bytes(key))
        except NotFoundError:
            break
        n += 1
    return merge_records(records), n


def read_log_text(store: Store, run: str) -> bytes:
    """The whole log as one text, as a terminal would show it (dstack's lines included)."""
    return b"".join(data for _stream, data in read_log_records(store, run)[0])


class LogShipper:
    """Collects a job's output and ships it to the store in numbered chunks.

    With `eager_s`, output that comes after a quiet spell of at least `eager_s` is shipped at
    once by `write` (the first line of a job reaches its follower without waiting for the next
    periodic `flush`), and so is output that ends a line the last chunk left open (Python's
    unbuffered `print` writes a line's text and its newline apart); steady output still goes
    in chunks, at most one per `eager_s`.
    `local_copy` gets the log as one text whose lines stay whole (`dstack.lines`).
    """

    def __init__(self, store: Store, run: str, local_copy: Path | None = None,
                 eager_s: float | None = None) -> None:
        self.store = store
        self.run = run
        self.local_copy = local_copy
        self.eager_s = eager_s
        self._records: list[LogRecord] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._seq = len(store.list(log_prefix(run)))
        self._last_ship: float | None = None  # never shipped (monotonic time counts from boot)
        self._line_open = False  # the last chunk shipped ends inside a line
        self._hidden: list[bytes] = []
        self._copy_lines = LineKeeper()

    def hide(self, values: list[str]) -> None:
        """Mask these (secret) values wherever they appear in the output from now on."""
        self._hidden = [v.encode() for v in values if v]

    def write(self, data: bytes, stream: Stream = "out") -> None:
        """Add output of `stream` (thread-safe); it reaches the store on the next `flush`."""
        if not data:
            return
        if self._hidden:
            data = mask(data, self._hidden)
        with self._lock:
            self._records.append((stream, data))
            if self.local_copy is not None:
                with open(self.local_copy, "ab") as f:
                    f.write(self._copy_lines.write(LOCAL_COPY, stream, data))
        if self.eager_s is not None and (self._last_ship is None or
                                        time.monotonic() - self._last_ship >= self.eager_s
                                        or (self._line_open and b"\n" in data)):
            with contextlib.suppress(StoreError):  # the next periodic flush retries, and says
                self.flush()

    def say(self, line: str) -> None:
        """A line from dstack itself in the run's log."""
        self.write(f"[dstack] {line}\n".encode(), "dstack")

    def flush(self) -> None:
        """Ship buffered output as the next chunk."""
        with self._flush_lock:
            with self._lock:
                records, self._records = merge_records(self._records), []
            if not records:
                return
            try:
                self.store.put_bytes(log_chunk_key(self.run, self._seq), encode_records(records))
            except StoreError:
                with self._lock:
                    self._records[:0] = records
                raise
            self._seq += 1
            self._last_ship = time.monotonic()
            self._line_open = not records[-1][1].endswith(b"\n")

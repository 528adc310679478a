"""How the CLI talks: messages to stderr, tables and JSON to stdout (rich only for messages
to a terminal, imported then: it costs about 50 ms of start-up)."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from itertools import chain, islice, repeat
from typing import TYPE_CHECKING, TextIO, cast

from dstack.lines import DSTACK, LineKeeper, Target

if TYPE_CHECKING:
    from rich.console import Console

    from dstack.store.job_log import Stream


@cache
def _console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class State:
    """Global flags of the command line."""

    debug: bool = False
    after_dashes: list[str] = field(default_factory=list)


state = State()


def say(message: str) -> None:
    """A progress message (stderr), so stdout stays the job's or the data's. It starts on a
    line of its own, also when the job's output last stopped in the middle of a line."""
    with _writing:
        line = f"[dstack] {message}\n".encode()
        if _lines.write(_target(sys.stderr), DSTACK, line) != line:
            sys.stderr.write("\n")  # the job's line was left open on this terminal or file
            sys.stderr.flush()
        if sys.stderr.isatty():
            _console().print(f"[dim]\\[dstack][/dim] {message}", markup=True)
        else:
            print(f"[dstack] {message}", file=sys.stderr, flush=True)


def error(message: str, hint: str | None) -> None:
    """An error and what to do next."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    sys.stderr.flush()


_writing = threading.RLock()
"""Held while a message or the job's output is written: a run's first output comes from
another thread than its status lines, and a line must not start between the two."""
_lines = LineKeeper()


def _target(stream: TextIO) -> Target:
    """What `stream` writes to: stdout and stderr that go to one terminal or file are one."""
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return (-1, id(stream))
    return (st.st_dev, st.st_ino)


class ReaderGone(Exception):
    """The reader of stdout left (`dstack ps | head -1`): stdout now goes to /dev/null."""


@contextmanager
def _stdout_kept() -> Iterator[None]:
    """Writes to stdout; a closed pipe there becomes `ReaderGone` (click would turn a
    BrokenPipeError into exit code 1), and later writes go nowhere."""
    try:
        yield
    except BrokenPipeError:
        stdout_to_devnull()
        raise ReaderGone from None


def stdout_to_devnull() -> None:
    """Point stdout at /dev/null: its reader is gone, and later writes (the flush at exit
    too) must not fail again."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def write_log(stream: Stream, data: bytes) -> None:
    """A run's log record: the job's stdout byte for byte to stdout, its stderr to stderr,
    and dstack's own lines (from the runner) as messages."""
    if stream == "dstack":
        for line in data.decode(errors="replace").splitlines():
            say(line.removeprefix("[dstack] "))
        return
    out = sys.stdout if stream == "out" else sys.stderr
    with _writing, _stdout_kept():
        data = _lines.write(_target(out), stream, data)
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()


def print_json(doc: object) -> None:
    """JSON to stdout, as `json.dumps(doc, indent=2, default=str)` writes it."""
    text = _rows_json(doc) if isinstance(doc, list) else None
    if text is None:
        text = json.dumps(doc, indent=2, sort_keys=False, default=str)
    with _stdout_kept():
        print(text, flush=True)


ROWS_AT_ONCE = 500
"""How many rows `print_json_rows` encodes and writes at a time."""


def print_json_rows(rows: Iterable[object]) -> None:
    """A listing (`rows`) to stdout exactly as `print_json(list(rows))` writes it, written a
    batch at a time as the rows come: the reader takes the first rows while the later ones
    are made, instead of all of a large answer after the last one."""
    it = iter(rows)
    opening = "[\n"
    with _stdout_kept():
        while batch := list(islice(it, ROWS_AT_ONCE)):
            text = _rows_json(batch) or json.dumps(batch, indent=2, default=str)
            # Each is `[\n` + its rows at the first level of indentation + `\n]`, as they
            # are in the whole list's.
            sys.stdout.write(opening + text[2:-2])
            sys.stdout.flush()
            opening = ",\n"
        sys.stdout.write("[]\n" if opening == "[\n" else "\n]\n")
        sys.stdout.flush()


_SEP = "\x00"
"""Between values the C encoder writes: never in its output otherwise (it escapes every
control character)."""
_NESTED = (list, tuple, dict)


def _rows_json(rows: list[object]) -> str | None:
    """`json.dumps(rows, indent=2, default=str)` of a listing, about 3 times as fast: for
    dicts of the same keys in the same order whose values are scalars or lists of scalars,
    each column is encoded by the C encoder at once and the rows are pieced together in C.
    None for anything else (the caller encodes it the usual way)."""
    if not rows or type(rows[0]) is not dict:
        return None
    keys = tuple(rows[0])
    if not keys or not all(type(k) is str for k in keys) or \
            not all(type(r) is dict and tuple(r) == keys for r in rows):
        return None
    dicts = cast("list[dict[str, object]]", rows)
    pieces: list[Iterable[str]] = []
    for i, col in enumerate(zip(*(r.values() for r in dicts), strict=True)):
        shown = _scalars(col) if _flat(col) else _lists(col)
        if shown is None:
            return None
        pieces += [repeat(("  {\n" if i == 0 else ",\n") + f"    {json.dumps(keys[i])}: "),
                   shown]
    pieces.append(repeat("\n  },\n"))
    rows_text = "".join(chain.from_iterable(zip(*pieces, strict=False)))  # repeat is endless
    return "[\n" + rows_text[:-2] + "\n]"


def _flat(values: Sequence[object]) -> bool:
    return not any(issubclass(t, _NESTED) for t in set(map(type, values)))


def _scalars(values: Sequence[object]) -> list[str]:
    """Each scalar's JSON, as `json.dumps(value, default=str)` writes it."""
    return json.dumps(list(values), separators=(_SEP, ": "), default=str)[1:-1].split(_SEP)


def _lists(values: Sequence[object]) -> list[str] | None:
    """Each list of scalars as JSON indented at the second level; None for other values."""
    if not all(type(v) is list for v in values) or \
            not _flat([x for v in cast("Sequence[list[object]]", values) for x in v]):
        return None
    # `]SEP[` is only ever between two lists: SEP is escaped in strings, and no scalar
    # begins with `[` or ends with `]`.
    inner = json.dumps(values, separators=(_SEP, ": "), default=str)[2:-2].split(f"]{_SEP}[")
    return ["[\n      " + c.replace(_SEP, ",\n      ") + "\n    ]" if c else "[]"
            for c in inner]


def lines(texts: Sequence[str]) -> None:
    """Plain lines to stdout."""
    with _stdout_kept():
        sys.stdout.write("".join(f"{t}\n" for t in texts))
        sys.stdout.flush()


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain aligned table to stdout (fast for tens of thousands of rows)."""
    cells = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    widths = [max([len(c), *map(len, col)]) for c, col in zip(columns, cells, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths).format
    with _stdout_kept():
        sys.stdout.write("\n".join(line(*row).rstrip() for row in [columns, *rows]) + "\n")
        sys.stdout.flush()

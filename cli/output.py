"""How the CLI talks: messages to stderr, tables and JSON to stdout, via rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class State:
    """Global flags of the command line."""

    debug: bool = False
    after_dashes: list[str] = field(default_factory=list)


state = State()


def say(message: str) -> None:
    """A progress message (stderr), so stdout stays the job's or the data's."""
    err.print(f"[dim]\\[dstack][/dim] {message}", markup=True) if err.is_terminal else \
        print(f"[dstack] {message}", file=sys.stderr, flush=True)


def error(message: str, hint: str | None) -> None:
    """An error and what to do next."""
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    sys.stderr.flush()


def write_raw(data: bytes) -> None:
    """The job's output, byte for byte."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def print_json(doc: Any) -> None:
    """JSON to stdout."""
    print(json.dumps(doc, indent=2, sort_keys=False, default=str))


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain aligned table to stdout (fast for tens of thousands of rows)."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()

"""How the CLI talks: messages to stderr, tables and JSON to stdout (rich only for messages
to a terminal, imported then: it costs about 50 ms of start-up)."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


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
    """A progress message (stderr), so stdout stays the job's or the data's."""
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


def confirm(question: str, yes: bool) -> None:
    """Go on when `yes` (-y) or the user answers yes; exit 1 on no. Without a terminal to ask
    (stdin is not a TTY) the answer would be end-of-file: a UsageError asks for -y instead."""
    if yes:
        return
    if not sys.stdin.isatty():
        from dstack.errors import UsageError

        raise UsageError(f'"{question}" needs an answer, and there is no terminal to ask '
                         "(stdin is not a TTY)",
                         "Add -y (--yes) to the command to go ahead without being asked.")
    import typer

    if not typer.confirm(question, default=False):
        raise typer.Exit(1)


def write_raw(data: bytes) -> None:
    """The job's output, byte for byte."""
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def print_json(doc: Any) -> None:
    """JSON to stdout."""
    print(json.dumps(doc, indent=2, sort_keys=False, default=str))


def table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain aligned table to stdout (fast for tens of thousands of rows)."""
    cells = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
    widths = [max([len(c), *map(len, col)]) for c, col in zip(columns, cells, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths).format
    sys.stdout.write("\n".join(line(*row).rstrip() for row in [columns, *rows]) + "\n")
    sys.stdout.flush()

"""What the commands share: their common options, the project folder they work on, the
context they open and the one confirmation question."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dstack.cli import output

if TYPE_CHECKING:
    from dstack.run.context import Context

Profile = Annotated[str | None, typer.Option("--profile", help="Profile to use.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Yes = Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")]
ProjectOpt = Annotated[Path | None, typer.Option(
    "--project", "-C", help="Project folder (default: the nearest one from here up with "
                            ".dstack/workflows.yaml, else this one).")]


def open_context(profile: str | None) -> Context:
    """The profile's context, after tearing down whatever finished runs left behind."""
    from dstack.run.lifecycle import open_reconciled

    ctx = open_reconciled(profile, output.say)
    # What exists by now (modules, a listing cache) lives as long as the command: frozen, the
    # garbage collector does not walk it again (over 10,000 listed runs that costs a third).
    gc.freeze()
    return ctx


@contextmanager
def gc_paused() -> Iterator[None]:
    """The garbage collector paused while a listing is made and written: its tens of
    thousands of rows make no cycles, and collections while they pile up (each one walking
    the listed runs again) cost a tenth of the command. What is left is frozen, as in
    `open_context`, so that no collection walks it when the collector is back."""
    from dstack.run.listing import no_gc

    with no_gc():
        try:
            yield
        finally:
            gc.freeze()  # before the collector is back


def project_folder(option: Path | None, *, job_starts_at_root: bool = False) -> Path:
    """The project to work on: `-C` as given, else the nearest folder from the current one up
    with workflow files, else the current folder. A project found above the current folder is
    named; `job_starts_at_root` adds how to start a job here instead of at the project's root."""
    from dstack.run.project import find_project_dir

    if option is not None:
        return option.resolve()
    here = Path.cwd().resolve()
    found = find_project_dir(here)
    if found is None or found == here:
        return here
    message = f"using the project at {found}"
    if job_starts_at_root:
        sub = here.relative_to(found).as_posix()
        message += f"; the job starts at its root (`--working-dir {sub}` starts it here)"
    output.say(message)
    return found


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
    if not typer.confirm(question, default=False):
        raise typer.Exit(1)

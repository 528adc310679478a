"""Shared rendering for providers: shell lines from words, app jobs, a command-line form.

A word is quoted with `shlex.quote` unless it is a `Raw` reference dstack itself writes
(`"$PORT_0"`, `"$@"`), so user input never becomes shell code.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from dstack.errors import UsageError
from dstack.spec.provider import AppPort, JobParts, Usage


class Raw(str):
    """A shell word dstack wrote, used as it is."""


PORT = Raw('"$PORT_0"')
HOST = Raw('"$DSTACK_HOST"')
TOKEN = Raw('"$DSTACK_TOKEN"')
PASSED = Raw('"$@"')  # the arguments passed through from `dstack run`

Word = str | Raw


def shell_line(*words: Word) -> str:
    """One shell line; plain words are quoted."""
    return " ".join(w if isinstance(w, Raw) else shlex.quote(w) for w in words)


@dataclass(frozen=True)
class App:
    """What distinguishes one app provider from another, besides its command line."""

    name: str
    package: str
    ready_path: str = "/"
    url_path: str = "/"
    token: bool = False


def app_job(app: App, command: list[Word], *, version: str | None = None,
            exports: list[str] | None = None) -> JobParts:
    """The job of an app: one port, ready when `ready_path` answers, served at `url_path`."""
    package = f"{app.package}=={version}" if version else app.package
    return JobParts(
        shell=[*(exports or []), shell_line("exec", *command)],
        ports=1,
        apps=[AppPort(name=app.name, index=0, url_path=app.url_path, ready_path=app.ready_path)],
        packages=[package],
        token=app.token,
    )


def first_positional(provider: str, usage: Usage, field: str,
                     positional: list[str]) -> tuple[dict[str, object], list[str]]:
    """The command-line form `dstack run PROVIDER FIELD [ARGS]...`: `field` is the first
    argument, the rest go to the job; without it, `UsageError` showing the `usage` line."""
    if not positional or positional[0].startswith("-"):
        raise UsageError(f"`dstack run {provider}` needs its {field}",
                         f"Write it as `{usage.line(provider)}`.")
    return {field: positional[0]}, positional[1:]

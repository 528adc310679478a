"""The bootstrap script: what the compute of a run executes to start the runner.

On the local backend it is a local process; on a cloud instance, user-data or a startup
script that installs dstack first (`preamble`). Every value is quoted with `shlex.quote`.
"""

from __future__ import annotations

import shlex


def render_bootstrap(
    *,
    python: str,
    store_url: str,
    run: str,
    workdir: str,
    cache: str,
    host: str = "127.0.0.1",
    preamble: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> str:
    """A bash script that starts `python -m dstack.runner` for `run`."""
    lines = ["#!/usr/bin/env bash", "# Rendered by dstack: starts the runner of one run.",
             "set -euo pipefail"]
    lines += preamble or []
    for key, value in sorted((env or {}).items()):
        lines.append(f"export {key}={shlex.quote(value)}")
    argv = [python, "-m", "dstack.runner", "--store", store_url, "--run", run,
            "--workdir", workdir, "--cache", cache, "--host", host]
    lines.append("exec " + shlex.join(argv))
    return "\n".join(lines) + "\n"

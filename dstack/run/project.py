"""The project a run belongs to: its git remote's URL, else its folder.

`wf:latest` and `wf:TAG` resolve among the runs of one project, and `dstack ps` lists them,
so two projects on one machine (or sharing a team's bucket) never take each other's runs by
accident; tags stay global so that sharing is on purpose. A run recorded before runs had a
project belongs to the unknown project (`None`).

A command run in a subfolder works on the project above it: `find_project_dir` walks up to
the nearest folder whose `.dstack` holds workflow files.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from pathlib import Path

from dstack.home import dstack_home

_GIT_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
WORKFLOW_FILES = ("workflows.yaml", "workflows.yml")
"""With a `workflows/` folder, what makes a `.dstack` a project's (`spec_loader.workflow_files`)."""
UNKNOWN = "(unknown)"
"""How listings show the project of a run recorded before runs had one."""


def strip_credentials(url: str) -> str:
    """`url` without the credentials it may carry: the whole user part of an http(s) URL
    (`https://user:token@host/...`, `https://token@host/...`), the password of another
    scheme's (`ssh://git:pw@host` → `ssh://git@host`); scp-like `git@host:path` is kept."""
    scheme, sep, rest = url.partition("://")
    if not sep or not _SCHEME.match(scheme):
        return url
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    user, at, host = rest[:end].rpartition("@")
    if not at:
        return url
    if scheme.lower() in ("http", "https"):
        return f"{scheme}://{host}{rest[end:]}"
    return f"{scheme}://{user.partition(':')[0]}@{host}{rest[end:]}"


def _git(folder: Path, *args: str) -> str | None:
    """The output of `git -C folder ARGS...`, or None when git fails or is not installed."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV}
    env["GIT_TERMINAL_PROMPT"] = "0"
    try:
        proc = subprocess.run(["git", "-C", str(folder), *args], capture_output=True,
                              text=True, env=env, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_remote(folder: Path) -> str | None:
    """The URL of the repository's `origin`, else of its first remote (None without one)."""
    names = (_git(folder, "remote") or "").split()
    if not names:
        return None
    url = _git(folder, "remote", "get-url", "origin" if "origin" in names else names[0])
    return url or None


def project_of(folder: Path) -> str:
    """The identity of the project at `folder`: its git remote's URL without credentials,
    else the folder itself (absolute, links resolved)."""
    folder = Path(folder).resolve()
    remote = git_remote(folder)
    return strip_credentials(remote) if remote else str(folder)


def _dstack_homes() -> set[Path]:
    """The `.dstack` folders that are dstack homes (`DSTACK_HOME`, `~/.dstack`), not projects."""
    homes = set()
    for home in (dstack_home, lambda: Path.home() / ".dstack"):
        with contextlib.suppress(RuntimeError):  # no home directory to find
            homes.add(home().resolve())
    return homes


def find_project_dir(start: Path) -> Path | None:
    """The nearest folder from `start` up whose `.dstack` holds `workflows.yaml` (`.yml`) or a
    `workflows/` folder; None when there is none. A dstack home is never a project's `.dstack`,
    and the walk ends at the root of the git repository `start` is in (a repository inside
    another project is a project of its own)."""
    homes = _dstack_homes()
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        marker = folder / ".dstack"
        if marker.is_dir() and marker.resolve() not in homes and (
                (marker / "workflows").is_dir() or any(
                    (marker / name).exists() or (marker / name).is_symlink()
                    for name in WORKFLOW_FILES)):
            return folder
        if (folder / ".git").exists():
            return None
    return None


def project_label(project: str | None) -> str:
    """A project as listings show it."""
    return project if project is not None else UNKNOWN

"""The dstack home: where dstack keeps its store, Pulumi state, engine and passphrase.

`~/.dstack` unless `DSTACK_HOME` is set. Folders are created 0700 and secret files 0600.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from dstack.files import create_whole, write_whole


def default_home() -> Path:
    """The dstack home when `DSTACK_HOME` is not set: `~/.dstack`."""
    return Path.home() / ".dstack"


def dstack_home() -> Path:
    """The dstack home folder (not created)."""
    env = os.environ.get("DSTACK_HOME")
    return Path(env).expanduser().resolve() if env else default_home()


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it readable by its owner only."""
    path.mkdir(parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != 0o700:
        path.chmod(0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Atomically write `data` to `path` as a 0600 file (temp file, fsync, rename)."""
    private_dir(path.parent)
    write_whole(path, data, mode=0o600, sync=True)


def secret_file(path: Path, nbytes: int = 32) -> str:
    """Return the secret kept in `path`, generating it once (0600) if the file is missing.

    Safe against concurrent first use: the file appears whole (written aside, then
    hard-linked into place), and exactly one process's value wins.
    """
    if path.exists():
        return path.read_text().strip()
    private_dir(path.parent)
    create_whole(path, (secrets.token_urlsafe(nbytes) + "\n").encode(), mode=0o600, sync=True)
    return path.read_text().strip()

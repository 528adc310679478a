"""Files that appear whole: written aside under a temp name, then renamed (or linked) into
place, so a reader sees the old file or the new one, never half of one.

Every temp file is `.<name>.<pid>.<hex>.tmp` beside its target (a store's listing skips such
names), and is removed when the write fails.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def temp_beside(path: Path) -> Path:
    """A fresh temp name in `path`'s folder (nothing is created)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temp path beside `path` to write; renamed over `path` when the block succeeds,
    removed when it does not (`path`'s folder must exist by the end of the block)."""
    tmp = temp_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with suppress(OSError):  # e.g. ENOTDIR: there is no folder to leave it in
            tmp.unlink(missing_ok=True)


def _write_new(path: Path, data: bytes, mode: int, sync: bool) -> None:
    """Write `data` to the new file `path` (created with `mode`, less the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def write_whole(path: Path, data: bytes, *, mode: int = 0o666, sync: bool = False) -> None:
    """Write `data` to `path`, replacing any file there; `sync` flushes it to disk first."""
    with replacing(path) as tmp:
        _write_new(tmp, data, mode, sync)


def create_whole(path: Path, data: bytes, *, mode: int = 0o666, sync: bool = False) -> bool:
    """Write `data` to `path` only if nothing is there (hard-linked into place: exactly one
    of concurrent creators wins); False when something was."""
    tmp = temp_beside(path)
    try:
        _write_new(tmp, data, mode, sync)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)

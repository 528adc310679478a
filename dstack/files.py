"""Files that appear whole: written aside under a temp name, then renamed (or linked) into
place, so a reader sees the old file or the new one, never half of one.

Every temp file is `.<name>.<pid>.<hex>.tmp` beside its target (a store's listing skips such
names), and is removed when the write fails.
"""

from __future__ import annotations

import errno
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from stat import S_ISREG

COPY_CHUNK = 8 << 20
"""Bytes asked of the kernel per copy call at least (a file's whole size when larger)."""
KERNEL_COPY_REFUSED = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                 errno.ENOTSUP, errno.EPERM, errno.EBADF})
"""Errors by which a file system (or a sandbox) refuses an in-kernel copy: copy another way."""


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
    except BaseException:
        with suppress(OSError):  # e.g. ENOTDIR: there is no folder to leave it in
            tmp.unlink(missing_ok=True)
        raise


def copy_whole(src: Path, path: Path) -> None:
    """Copy the regular file `src` to `path`, replacing any file there (written aside, then
    renamed; not flushed to disk, as `cp` does not). FileNotFoundError when `src` is missing
    or not a regular file. The bytes move inside the kernel (a reflink where the file system
    shares blocks), with one `stat` of `src` and no buffered file objects."""
    src_fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO does not block
    try:
        st = os.fstat(src_fd)
        if not S_ISREG(st.st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", str(src))
        with replacing(path) as tmp:
            out_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
            try:
                copy_fd(src_fd, out_fd, st.st_size)
            finally:
                os.close(out_fd)
    finally:
        os.close(src_fd)


def copy_fd(src_fd: int, out_fd: int, size: int) -> None:
    """Copy from `src_fd`'s offset to its end (which may lie past `size`, its size when it
    was looked at) into `out_fd`: `copy_file_range`, else `sendfile`, else read and write."""
    chunk = max(size, COPY_CHUNK)
    for kernel_copy in _KERNEL_COPIES:
        done = 0
        try:
            while n := kernel_copy(out_fd, src_fd, chunk):
                done += n
        except OSError as exc:
            if exc.errno not in KERNEL_COPY_REFUSED:
                raise
            continue  # the offsets moved by what was copied: the next way goes on from there
        if done or not size:  # nothing from a file that had bytes: a pseudo-file system
            return
    while data := os.read(src_fd, COPY_CHUNK):
        view = memoryview(data)
        while view:
            view = view[os.write(out_fd, view):]


def _copy_file_range(out_fd: int, src_fd: int, count: int) -> int:
    return os.copy_file_range(src_fd, out_fd, count)


def _sendfile(out_fd: int, src_fd: int, count: int) -> int:
    return os.sendfile(out_fd, src_fd, None, count)


_KERNEL_COPIES: tuple[Callable[[int, int, int], int], ...] = (
    (_copy_file_range, _sendfile) if sys.platform == "linux" else ())
"""Elsewhere (macOS: `sendfile` only to sockets) the bytes go through a read/write loop."""


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

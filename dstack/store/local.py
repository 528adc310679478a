"""The local store: a folder on this machine (the local backend's; also what tests use)."""

from __future__ import annotations

import builtins
import errno
import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import unquote, urlparse

from dstack.errors import DstackError, NotFoundError, StoreError, UsageError
from dstack.files import copy_whole, create_whole, replacing
from dstack.store.base import JsonDoc, Store, check_key

SETTLE_NS = 3_000_000_000
"""How old a folder's mtime must be to stand for its contents (`folder_version`): older than
the coarsest timestamps (some file systems keep seconds, or two) and some clock skew."""


class LocalStore(Store):
    """A store in a folder on this machine (the local backend's)."""

    poll_s = 0.05
    """Reading a run's documents here costs a few file reads: a job's end and its first
    output reach a follower within 50 ms."""

    @classmethod
    def from_url(cls, url: str) -> LocalStore:
        """`file:///path/to/folder`."""
        return cls(Path(unquote(urlparse(url).path)))

    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"
        self._made: set[Path] = set()

    def _folder(self, path: Path) -> None:
        """Make `path`'s folder, once per store object (a sync writes many files there)."""
        parent = path.parent
        if parent not in self._made:
            parent.mkdir(parents=True, exist_ok=True)
            self._made.add(parent)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def _writing(self, key: str) -> Iterator[Path]:
        """A temp path beside `key`'s file; renamed over it when the block succeeds."""
        path = self._path(key)
        try:
            self._folder(path)
            with replacing(path) as tmp:
                yield tmp
        except OSError as exc:
            raise _store_error(exc, key) from exc

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._writing(key) as tmp:
            tmp.write_bytes(data)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError(f"{key} is not in the store {self.url}") from exc
        except OSError as exc:
            raise _store_error(exc, key) from exc

    def put_file(self, key: str, path: Path) -> None:
        """Copied whole (`copy_whole`: in the kernel, aside, then renamed; not flushed to
        disk). FileNotFoundError when `path` is missing or not a regular file: a missing
        source is the caller's business, not the store's."""
        dest = self._path(key)
        try:
            self._folder(dest)
            copy_whole(path, dest)
        except FileNotFoundError as exc:
            if exc.filename == str(path):
                raise
            raise _store_error(exc, key) from exc
        except OSError as exc:
            raise _store_error(exc, key) from exc

    def get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFoundError(f"{key} is not in the store {self.url}")
        path.parent.mkdir(parents=True, exist_ok=True)
        copy_whole(src, path)

    def create_bytes(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        return create_whole(path, data)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _files(self, prefix: str) -> Iterator[tuple[str, os.DirEntry[str]]]:
        """(key, entry) of every file under `prefix`, without the leftovers of writes; as in
        `os.walk`, a linked folder is not entered. One `os.scandir` per folder."""
        base = self.root / prefix if prefix else self.root
        todo = [(str(base), base.relative_to(self.root).as_posix())]
        while todo:
            folder, rel = todo.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError:
                continue
            for e in entries:
                key = e.name if rel == "." else f"{rel}/{e.name}"
                if e.is_dir():
                    if not e.is_symlink():
                        todo.append((e.path, key))
                elif not (e.name.startswith(".") and e.name.endswith((".tmp", ".lock"))):
                    yield key, e

    def list(self, prefix: str) -> list[str]:
        return sorted(key for key, _ in self._files(prefix))

    def list_versions(self, prefix: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, e in self._files(prefix):  # 10,000 tags: ~20 ms
            with suppress(FileNotFoundError):
                st = e.stat()  # a linked file's version is its target's
                out[key] = f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"
        return dict(sorted(out.items()))

    def folder_version(self, prefix: str) -> str | None:
        """The folder's own mtime and inode: every write renames a file into its folder and
        every delete unlinks one, and either moves the mtime (a file edited in place by hand
        does not). None while the mtime is recent (`SETTLE_NS`): a write within the same
        clock tick would not move it."""
        try:
            st = os.stat(self.root / prefix if prefix else self.root)
        except OSError:
            return None
        if time.time_ns() - st.st_mtime_ns < SETTLE_NS:
            return None
        return f"{st.st_mtime_ns}-{st.st_ino}"

    def list_times(self, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, e in self._files(prefix):
            with suppress(FileNotFoundError):
                out[key] = e.stat().st_mtime
        return dict(sorted(out.items()))

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        base = self.root / prefix if prefix else self.root
        try:
            return sorted(e.name for e in os.scandir(base) if not e.name.startswith("."))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise NotFoundError(f"{key} is not in the store {self.url}") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def share_refusal(self) -> DstackError:
        """A folder has nothing to sign, and no one else reaches files on this machine."""
        return UsageError(f"the artifacts of this profile are files on this machine (the store "
                          f"folder {self.root}): there is no link to sign, and no one else "
                          "can reach them", "Copy them to where they are needed with `dstack "
                          "artifacts download RUN|:TAG -o DIR`, or run the workflow with a "
                          "profile whose store is an S3 or GCS bucket (`dstack config add aws|"
                          "gcp ...`, then `--profile NAME`) and share from there.")

    def delete_prefix(self, prefix: str) -> None:
        self._made.clear()
        base = self.root / prefix.rstrip("/")
        if base.is_dir():
            shutil.rmtree(base, ignore_errors=True)
        else:
            base.unlink(missing_ok=True)

    def update_json(self, key: str, mutate: Callable[[JsonDoc], JsonDoc | None]) -> JsonDoc:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.get_json(key) if path.exists() else {}
            new = mutate(dict(current))
            if new is None:
                return current
            self.put_json(key, new)
            return new


def _store_error(exc: OSError, key: str) -> StoreError:
    if exc.errno == errno.ENOSPC:
        return StoreError(f"no space left on the device of the store while writing {key}",
                          "Free disk space; artifacts written so far are kept.")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StoreError(f"the store is not writable ({exc.strerror}) while writing {key}",
                          "Check the permissions of the store folder.")
    return StoreError(f"store write of {key} failed: {exc}")

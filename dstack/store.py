"""Artifact and metadata stores: the same keys on a local folder, S3 and GCS.

Layout (DESIGN.md): `runs/<run>/run.json`, `runs/<run>/logs/…`, `runs/<run>/artifacts/<path>`,
`tags/<tag>.json`, `code/<hash>.tar.gz`. Keys are `/`-separated relative paths. Writes are
atomic: a reader sees the old object or the new one, never half of one.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import json
import os
import secrets
import shutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from dstack.errors import NotFoundError, StoreError, UsageError

JsonDoc = dict[str, Any]


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative store key; raise otherwise."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key {key!r}")
    return key


class Store(ABC):
    """Objects under string keys, plus JSON helpers shared by every store."""

    url: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, replacing any object there."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object at `key`; NotFoundError when there is none."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload the file at `path` to `key`."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download `key` into the file `path` (written aside, then renamed)."""

    @abstractmethod
    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write `data` at `key` only if nothing is there; False when something was."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is at `key`."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder-like prefix ending in `/`), sorted."""

    @abstractmethod
    def list_versions(self, prefix: str) -> dict[str, str]:
        """Every key under `prefix` with a token that changes whenever its object does."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> list[str]:
        """The names one level below `prefix` (like `ls`), sorted."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes of the object at `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at `key` if present."""

    @abstractmethod
    def update_json(self, key: str, mutate: Callable[[JsonDoc], JsonDoc | None]) -> JsonDoc:
        """Read-modify-write the JSON document at `key` without losing concurrent updates.

        `mutate` gets the current document ({} when absent) and returns the new one, or None
        to leave it as it is. Returns the document as stored afterwards.
        """

    def list_times(self, prefix: str) -> dict[str, float]:
        """Every key under `prefix` with the time (epoch seconds) its object was last written.

        A store that cannot tell returns {}: nothing in it ever looks old.
        """
        return {}

    def available(self) -> bool:
        """Whether the store's bucket (or folder) exists, so reads mean something.

        A cloud profile's bucket comes with its workspace stack, on the first run.
        """
        return True

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix`."""
        for key in self.list(prefix):
            self.delete(key)

    def get_json(self, key: str) -> JsonDoc:
        """The JSON document at `key`."""
        return load_json_doc(self.get_bytes(key), f"{self.url}/{key}")

    def put_json(self, key: str, doc: JsonDoc) -> None:
        """Write a JSON document at `key`."""
        self.put_bytes(key, dump_json_doc(doc))

    def create_json(self, key: str, doc: JsonDoc) -> bool:
        """Write a JSON document at `key` only if nothing is there."""
        return self.create_bytes(key, dump_json_doc(doc))


def load_json_doc(data: bytes, where: str) -> JsonDoc:
    """`data` parsed as a JSON object; StoreError naming `where` otherwise."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise StoreError(f"{where} is not a JSON object")
    return doc


def dump_json_doc(doc: JsonDoc) -> bytes:
    """A JSON document as the stores write it."""
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


class LocalStore(Store):
    """A store in a folder on this machine (the local backend's)."""

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
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            self._folder(path)
            yield tmp
            os.replace(tmp, path)
        except OSError as exc:
            with suppress(OSError):  # e.g. ENOTDIR: there is no folder to leave it in
                tmp.unlink(missing_ok=True)
            raise _store_error(exc, key) from exc
        except BaseException:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise

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
        if not path.is_file():  # a missing source is the caller's business, not the store's
            raise FileNotFoundError(path)
        with self._writing(key) as tmp:
            shutil.copyfile(path, tmp)

    def get_file(self, key: str, path: Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise NotFoundError(f"{key} is not in the store {self.url}")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def create_bytes(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)  # atomic create-if-absent, and the file appears whole
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

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

    def list_times(self, prefix: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for key, e in self._files(prefix):
            with suppress(FileNotFoundError):
                out[key] = e.stat().st_mtime
        return dict(sorted(out.items()))

    def list_dirs(self, prefix: str) -> list[str]:
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


STORES: dict[str, str] = {
    "file": "dstack.store:LocalStore",
    "s3": "dstack.store_s3:S3Store",
    "gs": "dstack.store_gcs:GCSStore",
}
"""URL scheme → store class (`module:Class`), imported lazily."""


def open_store(url: str) -> Store:
    """The store at `url` (`file:///path`; cloud schemes come with their backends)."""
    parsed = urlparse(url)
    target = STORES.get(parsed.scheme)
    if target is None:
        raise UsageError(f"unsupported store URL {url!r}",
                         f"Supported schemes: {', '.join(s + '://' for s in STORES)}.")
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    if parsed.scheme == "file":
        store: Store = cls(Path(unquote(parsed.path)))
        return store
    store = cls.from_url(url)
    return store

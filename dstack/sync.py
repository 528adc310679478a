"""Moving a running job's output to the store: artifact files and log chunks.

Artifacts are uploaded whenever a file is new or changed (size or mtime), while the job
runs and once more at its end. Logs are shipped as numbered chunks
(`runs/<run>/logs/<seq>.log`), which works the same on a folder, S3 and GCS.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dstack.errors import NotFoundError, StoreError
from dstack.secrets import mask
from dstack.store import Store

UPLOAD_THREADS = 8


def artifact_prefix(run: str) -> str:
    """Store prefix of a run's artifacts."""
    return f"runs/{run}/artifacts/"


def _walk_files(root: Path, rel: str) -> list[tuple[str, Path, os.stat_result]]:
    """(relative key, file, stat) under `root/rel`. Links are followed only to files inside
    root; linked folders are not entered (no loops, nothing from outside)."""
    base = root / rel
    real_root = root.resolve()
    if not _inside(base, real_root):  # a link on the way (not only the last) leads out
        return []
    if base.is_file():
        return [(rel, base, base.stat())]
    out: list[tuple[str, Path, os.stat_result]] = []
    prefix = len(str(root)) + 1
    folders = [str(base)]
    while folders:
        try:
            entries = os.scandir(folders.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_symlink():
                        if not entry.is_file() or not _inside(Path(entry.path), real_root):
                            continue
                        st = entry.stat()
                    elif entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
                        continue
                    elif entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                    else:
                        continue
                except OSError:
                    continue
                if not entry.name.startswith(".dstack-"):
                    out.append((entry.path[prefix:], Path(entry.path), st))
    return out


def _inside(path: Path, real_root: Path) -> bool:
    try:
        path.resolve().relative_to(real_root)
    except (ValueError, OSError):
        return False
    return True


class ArtifactSync:
    """Uploads the changed files of a job's artifact paths to the store."""

    def __init__(self, store: Store, run: str, root: Path, paths: list[str]) -> None:
        self.store = store
        self.prefix = artifact_prefix(run)
        self.root = root
        self.paths = paths
        self._seen: dict[str, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self.uploaded = 0

    def changed(self) -> list[tuple[str, Path, tuple[int, int]]]:
        """Files that are new or changed since their last upload."""
        out = []
        for rel in self.paths:
            for key, path, st in _walk_files(self.root, rel):
                sig = (st.st_size, st.st_mtime_ns)
                if self._seen.get(key) != sig:
                    out.append((key, path, sig))
        return out

    def sync(self) -> int:
        """Upload what changed; return how many files. Raises StoreError on failure."""
        with self._lock:
            todo = self.changed()
            if not todo:
                return 0

            def upload(item: tuple[str, Path, tuple[int, int]]) -> None:
                key, path, sig = item
                try:
                    self.store.put_file(self.prefix + key, path)
                except FileNotFoundError:
                    return  # deleted while we looked: nothing to keep
                self._seen[key] = sig

            if len(todo) == 1:
                upload(todo[0])
            else:
                with ThreadPoolExecutor(min(UPLOAD_THREADS, len(todo))) as pool:
                    list(pool.map(upload, todo))
            self.uploaded += len(todo)
            return len(todo)


class LogShipper:
    """Collects a job's output and ships it to the store in numbered chunks.

    With `eager_s`, output that comes after a quiet spell of at least `eager_s` is shipped at
    once by `write` (the first line of a job reaches its follower without waiting for the next
    periodic `flush`); steady output still goes in chunks, at most one per `eager_s`.
    """

    def __init__(self, store: Store, run: str, local_copy: Path | None = None,
                 eager_s: float | None = None) -> None:
        self.store = store
        self.prefix = f"runs/{run}/logs/"
        self.local_copy = local_copy
        self.eager_s = eager_s
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._seq = len(store.list(self.prefix))
        self._last_ship: float | None = None  # never shipped (monotonic time counts from boot)

    def hide(self, values: list[str]) -> None:
        """Mask these (secret) values wherever they appear in the output from now on."""
        self._hidden = [v.encode() for v in values if v]

    def write(self, data: bytes) -> None:
        """Add output (thread-safe); it reaches the store on the next `flush`."""
        if getattr(self, "_hidden", None):
            data = mask(data, self._hidden)
        with self._lock:
            self._buf += data
        if self.local_copy is not None:
            with open(self.local_copy, "ab") as f:
                f.write(data)
        if self.eager_s is not None and (self._last_ship is None or
                                        time.monotonic() - self._last_ship >= self.eager_s):
            with contextlib.suppress(StoreError):  # the next periodic flush retries, and says
                self.flush()

    def say(self, line: str) -> None:
        """A line from dstack itself in the run's log."""
        self.write(f"[dstack] {line}\n".encode())

    def flush(self) -> None:
        """Ship buffered output as the next chunk."""
        with self._flush_lock:
            with self._lock:
                data, self._buf = bytes(self._buf), bytearray()
            if not data:
                return
            try:
                self.store.put_bytes(f"{self.prefix}{self._seq:08d}.log", data)
            except StoreError:
                with self._lock:
                    self._buf[:0] = data
                raise
            self._seq += 1
            self._last_ship = time.monotonic()


def read_log_chunks(store: Store, run: str, start: int = 0) -> tuple[bytes, int]:
    """Log output of `run` from chunk `start` on, and the index of the next chunk."""
    prefix = f"runs/{run}/logs/"
    keys = [k for k in store.list(prefix) if k.endswith(".log")]
    out = bytearray()
    n = start
    for key in keys[start:]:
        try:
            out += store.get_bytes(key)
        except NotFoundError:
            break
        n += 1
    return bytes(out), n

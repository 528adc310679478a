"""Moving a running job's artifact files to the store (its log: `dstack.store.job_log`).

Artifacts are uploaded whenever a file is new or changed (size or mtime), while the job
runs and once more at its end.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import zip_longest
from pathlib import Path

from dstack.store.base import Store
from dstack.store.keys import artifact_prefix

UPLOAD_THREADS = 8
BATCH_FILES = 32
"""Files uploaded one after another by a thread, at most (`_batches`)."""
BATCH_BYTES = 8 << 20
"""Bytes of a batch, at most (a larger file is a batch of its own)."""
Change = tuple[str, Path, tuple[int, int]]
"""A file to upload: its key under the run's artifacts, its path, its (size, mtime_ns)."""


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


def _batches(todo: list[Change], threads: int) -> list[list[Change]]:
    """`todo` in batches, each uploaded in order by one thread: a few files of one folder
    (at most `BATCH_FILES`, fewer when there are few files for the threads; at most
    `BATCH_BYTES` unless a single file is larger), the largest batches first, and batches of
    a size taking the folders in turn. A folder store's file creations in one folder wait on
    that folder's lock (ext4 spins on it), so each thread is best in another folder; one
    after another in the same folder, they stay close on disk and cost less."""
    most = max(1, min(BATCH_FILES, -(-len(todo) // threads)))
    by_folder: dict[str, list[list[Change]]] = {}
    last_bytes: dict[str, int] = {}
    for item in sorted(todo, key=lambda item: item[2][0], reverse=True):
        folder, size = item[0].rpartition("/")[0], item[2][0]
        batches = by_folder.setdefault(folder, [[]])
        if batches[-1] and (len(batches[-1]) >= most
                            or last_bytes[folder] + size > BATCH_BYTES):
            batches.append([])
            last_bytes[folder] = 0
        batches[-1].append(item)
        last_bytes[folder] = last_bytes.get(folder, 0) + size
    turns = [batch for row in zip_longest(*by_folder.values()) for batch in row if batch]
    return sorted(turns, key=lambda batch: sum(item[2][0] for item in batch), reverse=True)


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
        """Uploads so far (a file that changed three times counts three)."""

    @property
    def files(self) -> int:
        """How many distinct files have been saved so far."""
        return len(self._seen)

    def changed(self) -> list[Change]:
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

            def upload(batch: list[Change]) -> None:
                for key, path, sig in batch:
                    try:
                        self.store.put_file(self.prefix + key, path)
                    except FileNotFoundError:
                        continue  # deleted while we looked: nothing to keep
                    self._seen[key] = sig

            batches = _batches(todo, UPLOAD_THREADS)
            if len(batches) == 1:
                upload(batches[0])
            else:
                with ThreadPoolExecutor(min(UPLOAD_THREADS, len(batches))) as pool:
                    list(pool.map(upload, batches))
            self.uploaded += len(todo)
            return len(todo)

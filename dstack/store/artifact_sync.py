"""Moving a running job's artifact files to the store (its log: `dstack.store.job_log`).

Artifacts are uploaded whenever a file is new or changed (size or mtime), while the job
runs and once more at its end.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dstack.store.base import Store
from dstack.store.keys import artifact_prefix

UPLOAD_THREADS = 8


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
        """Uploads so far (a file that changed three times counts three)."""

    @property
    def files(self) -> int:
        """How many distinct files have been saved so far."""
        return len(self._seen)

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

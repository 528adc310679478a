"""Code archives in a store (`code/<sha256>.tar.gz`): putting one there for a run, and
removing those no run refers to any more.

An archive is put in the store before the record of the run that refers to it is written,
so an archive no run refers to may belong to a run being submitted right now. Collection
therefore leaves every archive younger than `GRACE_S` alone, and a run that reuses an
archive older than half of that puts it there again, so that it is young while the run's
record is written.
"""

from __future__ import annotations

import time
from collections.abc import Set

from dstack.code.packaging import CodeArchive
from dstack.store.base import Store
from dstack.store.keys import CODE, code_of

GRACE_S = 600.0


def upload_code(store: Store, archive: CodeArchive, now: float | None = None) -> None:
    """Put `archive` in the store unless a copy younger than half of `GRACE_S` is there."""
    now = time.time() if now is None else now
    written = store.list_times(CODE).get(archive.store_key)
    if written is None or now - written > GRACE_S / 2:
        store.put_file(archive.store_key, archive.path)


def remove_unused_code(store: Store, referenced: Set[str], now: float | None = None,
                       grace_s: float = GRACE_S) -> list[str]:
    """Delete the archives whose sha256 is not in `referenced` (the `code` of every run)
    and that are older than `grace_s`; the keys deleted."""
    now = time.time() if now is None else now
    removed = []
    for key, written in sorted(store.list_times(CODE).items()):
        sha256 = code_of(key)
        if sha256 is None or sha256 in referenced or now - written < grace_s:
            continue
        store.delete(key)
        removed.append(key)
    return removed

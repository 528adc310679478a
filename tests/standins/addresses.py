"""Loopback addresses that stand in for the public IPs of stand-in instances.

A real public IP is out of reach here, so each instance gets its own `127.0.0.N` (N from 2
up), allocated once per world in `<world>/loopback-ips.json`:
`{"next": N, "used": {"<cloud>-<id>": "127.0.0.N"}}`. The file is read and rewritten in
place under an exclusive `fcntl` lock on itself, so the engines of both stand-in clouds
(aws, gcp) can allocate at once. Apps on an instance bind 0.0.0.0, so they answer on it.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.standins.instance import world

FILE = "loopback-ips.json"
FIRST, LAST = 2, 254


@contextmanager
def _locked() -> Iterator[dict[str, Any]]:
    """The allocation document, written back (in place) when the block ends without error."""
    fd = os.open(world() / FILE, os.O_RDWR | os.O_CREAT, 0o644)
    with os.fdopen(fd, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        text = f.read()
        doc: dict[str, Any] = json.loads(text) if text.strip() else {}
        doc.setdefault("next", FIRST)
        doc.setdefault("used", {})
        yield doc
        f.seek(0)
        f.truncate()
        f.write(json.dumps(doc, indent=1, sort_keys=True))
        f.flush()


def _ip(n: int) -> str:
    return f"127.0.0.{n}"


def _key(cloud: str, instance_id: str) -> str:
    return f"{cloud}-{instance_id}"


def allocate(cloud: str, instance_id: str) -> str:
    """The instance's loopback address (the same one on every call until `release`)."""
    with _locked() as doc:
        used: dict[str, str] = doc["used"]
        key = _key(cloud, instance_id)
        if key in used:
            return used[key]
        taken = set(used.values())
        n = int(doc["next"])
        if n > LAST or _ip(n) in taken:  # wrapped around: the lowest free one
            n = next((i for i in range(FIRST, LAST + 1) if _ip(i) not in taken), 0)
            if not n:
                raise RuntimeError(f"no loopback address left in {world() / FILE}")
        used[key] = _ip(n)
        doc["next"] = n + 1
        return used[key]


def lookup(cloud: str, instance_id: str) -> str | None:
    """The instance's address, or None when it has none."""
    path: Path = world() / FILE
    if not path.exists():
        return None
    with _locked() as doc:
        found: str | None = doc["used"].get(_key(cloud, instance_id))
        return found


def release(cloud: str, instance_id: str) -> None:
    """Free the instance's address (idempotent)."""
    with _locked() as doc:
        doc["used"].pop(_key(cloud, instance_id), None)

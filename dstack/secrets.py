"""Secrets: per-profile values that jobs get as environment variables.

They live in the profile's store under `secrets/<NAME>` (the local store is a 0700 folder;
cloud buckets are private and encrypted, readable by the run's instance role), so they
never appear in a bootstrap script, a Pulumi state or a run document. The runner reads them
when the job starts and masks their values in the job's log.
"""

from __future__ import annotations

import re

from dstack.errors import NotFoundError, UsageError
from dstack.names import did_you_mean
from dstack.store import Store

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
PREFIX = "secrets/"


def _check(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"invalid secret name {name!r}",
                         "Use an environment variable name: letters, digits and '_'.")
    return name


def add_secret(store: Store, name: str, value: str) -> None:
    """Store a secret (replacing one of the same name)."""
    if not value:
        raise UsageError(f"the value of secret {name} is empty")
    store.put_bytes(PREFIX + _check(name), value.encode())


def list_secrets(store: Store) -> list[str]:
    """Names of the profile's secrets."""
    return [k[len(PREFIX):] for k in store.list(PREFIX)]


def delete_secret(store: Store, name: str) -> None:
    """Remove a secret."""
    names = list_secrets(store)
    if _check(name) not in names:
        raise NotFoundError(f"no secret named {name!r}",
                            did_you_mean(name, names) or "`dstack secrets list` shows them.")
    store.delete(PREFIX + name)


def load_secrets(store: Store) -> dict[str, str]:
    """Every secret of the profile, for the runner."""
    return {name: store.get_bytes(PREFIX + name).decode() for name in list_secrets(store)}


def mask(data: bytes, values: list[bytes]) -> bytes:
    """`data` with every secret value replaced by `***`."""
    for value in values:
        if value:
            data = data.replace(value, b"***")
    return data

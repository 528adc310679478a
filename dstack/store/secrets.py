"""Secrets: per-profile values that jobs get as environment variables.

They live in the profile's store under `secrets/<NAME>` (the local store is a 0700 folder;
cloud buckets are private and encrypted, readable by the run's instance role), so they
never appear in a bootstrap script, a Pulumi state or a run document. The runner reads them
when the job starts and masks their values in the job's log.

The values of a run's `--env-file` are kept the same way, per run, in `runs/<run>/env.json`
(deleted with the run); the run document lists only their names (`Job.stored_env`).
"""

from __future__ import annotations

import re

from dstack.errors import NotFoundError, StoreError, UsageError
from dstack.names import did_you_mean
from dstack.store.base import Store
from dstack.store.keys import SECRETS, run_env_key, secret_key

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RUN_ENV_VERSION = 1
MIN_MASKED = 4
"""Values of an env file shorter than this are not masked in logs: masking `1` would mask
every 1 of the job's output (they stay out of the run document and the dry run all the same)."""


def _check(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"invalid secret name {name!r}",
                         "Use an environment variable name: letters, digits and '_'.")
    return name


def add_secret(store: Store, name: str, value: str) -> None:
    """Store a secret (replacing one of the same name)."""
    if not value:
        raise UsageError(f"the value of secret {name} is empty")
    store.put_bytes(secret_key(_check(name)), value.encode())


def list_secrets(store: Store) -> list[str]:
    """Names of the profile's secrets."""
    return [k[len(SECRETS):] for k in store.list(SECRETS)]


def delete_secret(store: Store, name: str) -> None:
    """Remove a secret."""
    names = list_secrets(store)
    if _check(name) not in names:
        raise NotFoundError(f"no secret named {name!r}",
                            did_you_mean(name, names) or "`dstack secrets list` shows them.")
    store.delete(secret_key(name))


def load_secrets(store: Store) -> dict[str, str]:
    """Every secret of the profile, for the runner."""
    return {name: store.get_bytes(secret_key(name)).decode() for name in list_secrets(store)}


def mask(data: bytes, values: list[bytes]) -> bytes:
    """`data` with every secret value replaced by `***`."""
    for value in values:
        if value:
            data = data.replace(value, b"***")
    return data


def put_run_env(store: Store, run: str, env: dict[str, str]) -> None:
    """Keep the values of a run's `--env-file` variables for its runner."""
    store.put_json(run_env_key(run), {"version": RUN_ENV_VERSION, "env": env})


def load_run_env(store: Store, run: str, names: list[str]) -> dict[str, str]:
    """The values of the run's `--env-file` variables `names`, for the runner."""
    try:
        env = store.get_json(run_env_key(run)).get("env") or {}
    except NotFoundError:
        env = {}
    missing = sorted(set(names) - set(env))
    if missing:
        raise StoreError(f"the values of {', '.join(missing)} (from --env-file) are not in the "
                         f"store ({run_env_key(run)} was deleted)", "Start the run again.")
    return {name: str(env[name]) for name in names}


def maskable(values: list[str]) -> list[str]:
    """The env file values worth masking in a log (see `MIN_MASKED`)."""
    return [v for v in values if len(v) >= MIN_MASKED]

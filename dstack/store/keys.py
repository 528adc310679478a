"""Every key dstack reads or writes in a store, spelled once (the same on a folder, S3, GCS).

    runs/<run>/run.json            the run's record            `run_key`
    runs/<run>/logs/<seq>.log      its log, in numbered chunks  `log_prefix`, `log_chunk_key`
    runs/<run>/artifacts/<path>    its artifacts               `artifact_prefix`
    runs/<run>/stop.json           a request to stop it        `stop_key`
    runs/<run>/heartbeat.json      its runner's heartbeat      `heartbeat_key`
    runs/<run>/stack.json          its stack's updates         `stack_key`
    runs/<run>/env.json            its `--env-file` values     `run_env_key`
    tags/<tag>.json                a tag                       `tag_key`
    code/<sha256>.tar.gz           a code archive              `code_key`
    secrets/<NAME>                 a profile's secret          `secret_key`
    wheels/<digest>/<file>         the dstack an instance runs `wheel_key`

Functions only spell keys; names are checked where they come from (`check_run_name`, ...).
"""

from __future__ import annotations

import re

RUNS = "runs/"
TAGS = "tags/"
CODE = "code/"
SECRETS = "secrets/"
WHEELS = "wheels/"
RUN_FILE = "run.json"
"""The name of a run's record in its folder (`runs/<run>/run.json`)."""
LOG_SUFFIX = ".log"
_ARCHIVE = r"([0-9a-f]{64})\.tar\.gz"
CODE_ARCHIVE = re.compile(rf"^{_ARCHIVE}$")
"""The name of a code archive in `code/`."""
_CODE = re.compile(rf"^{CODE}{_ARCHIVE}$")
_TAG = re.compile(rf"^{TAGS}(.+)\.json$")


def run_prefix(run: str) -> str:
    """Everything of a run (`dstack rm` deletes it)."""
    return f"{RUNS}{run}/"


def run_key(run: str) -> str:
    """The run's record."""
    return f"{run_prefix(run)}{RUN_FILE}"


def log_prefix(run: str) -> str:
    """The run's log chunks."""
    return f"{run_prefix(run)}logs/"


def log_chunk_key(run: str, seq: int) -> str:
    """Chunk number `seq` of the run's log (zero-padded, so keys sort in order)."""
    return f"{log_prefix(run)}{seq:08d}{LOG_SUFFIX}"


def artifact_prefix(run: str) -> str:
    """The run's artifacts; an artifact's key is this plus its path in the job's folder."""
    return f"{run_prefix(run)}artifacts/"


def stop_key(run: str) -> str:
    """A request to stop the run (read by its runner)."""
    return f"{run_prefix(run)}stop.json"


def heartbeat_key(run: str) -> str:
    """The runner's heartbeat (how a cloud run shows it is alive)."""
    return f"{run_prefix(run)}heartbeat.json"


def stack_key(run: str) -> str:
    """The updates of the run's stack, as dstack recorded them (`dstack audit`)."""
    return f"{run_prefix(run)}stack.json"


def run_env_key(run: str) -> str:
    """The values of the run's `--env-file` variables."""
    return f"{run_prefix(run)}env.json"


def tag_key(tag: str) -> str:
    """A tag's document."""
    return f"{TAGS}{tag}.json"


def tag_of(key: str) -> str | None:
    """The tag whose document is at `key`; None for any other key."""
    match = _TAG.match(key)
    return match.group(1) if match else None


def code_key(sha256: str) -> str:
    """The code archive of this sha256."""
    return f"{CODE}{sha256}.tar.gz"


def code_of(key: str) -> str | None:
    """The sha256 of the code archive at `key`; None for any other key."""
    match = _CODE.match(key)
    return match.group(1) if match else None


def secret_key(name: str) -> str:
    """A secret of the profile."""
    return f"{SECRETS}{name}"


def wheel_key(digest: str, filename: str) -> str:
    """A dstack wheel, under the digest of what it was built from."""
    return f"{WHEELS}{digest}/{filename}"

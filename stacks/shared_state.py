"""A team's shared Pulumi state: where it lives, the team's passphrase, and stale locks.

`dstack config add aws|gcp NAME --shared` keeps the profile's Pulumi state in a private
bucket of its own beside the workspace bucket (`<bucket>-state`, prefix `state/`): Pulumi
cannot keep a stack's state in a bucket that stack creates, so the state bucket is made
with the cloud's SDK when the profile is added (private, versioned, encrypted), and is
never deleted by dstack. Every teammate who adds the profile with the same command points
at the same bucket, and so sees the same workspace and run stacks. A profile may also name
any bucket URL itself (`--state-url s3://BUCKET/state`).

The stacks' secrets are encrypted with a passphrase the whole team must share, or no one
could destroy a teammate's stack. The first teammate's dstack creates it (a conditional
write: one wins) at `dstack/pulumi-passphrase.json` under the state's prefix, and each
machine keeps a 0600 copy in its home. Whoever can read the state bucket can read the
passphrase: the bucket's access policy is the boundary of the stacks' secrets.

Engine locks in a bucket carry a host name, a pid and a time. Another machine's pid means
nothing here, so a lock of another host is stale only when it is older than the profile's
`lock_timeout` and the caller says the run behind it is gone (its heartbeat is stale).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import socket
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlparse

from dstack.config.profiles import Profile
from dstack.errors import NotFoundError, StoreError, UsageError
from dstack.home import write_private
from dstack.names import slug
from dstack.procs import process_alive
from dstack.stacks.file_state import ORGANIZATION, PROJECT_NAME
from dstack.store.base import Store, open_store

STATE_PREFIX = "state"
"""Where in the state bucket Pulumi keeps its `.pulumi/` folder."""
PASSPHRASE_KEY = "dstack/pulumi-passphrase.json"
"""The team's passphrase, under the state's prefix."""


def state_bucket_name(bucket: str) -> str:
    """The state bucket beside workspace bucket `bucket`."""
    return slug(f"{bucket[:57]}-state", 63, squeeze=False)


def shared_state_url(backend: str, settings: Mapping[str, str]) -> str:
    """Create (if missing) the state bucket of a profile with these settings; its URL."""
    bucket = state_bucket_name(settings["bucket"])
    if backend == "aws":
        _create_s3_bucket(bucket, settings)
        query = {"region": settings["region"],
                 **({"profile": settings["aws_profile"]} if settings.get("aws_profile") else {})}
        return f"s3://{bucket}/{STATE_PREFIX}?{urlencode(query)}"
    if backend == "gcp":
        _create_gcs_bucket(bucket, settings)
        return f"gs://{bucket}/{STATE_PREFIX}"
    raise UsageError(f"--shared is for aws and gcp profiles, not {backend}",
                     "Pass --state-url s3://BUCKET/PATH (or gs://) to share the state.")


def _create_s3_bucket(bucket: str, settings: Mapping[str, str]) -> None:
    """A private, versioned, encrypted S3 bucket, unless the team made it already."""
    import boto3
    import botocore.exceptions as bexc

    region = settings["region"]
    s3 = boto3.Session(profile_name=settings.get("aws_profile"), region_name=region).client("s3")
    try:
        s3.create_bucket(Bucket=bucket, **({} if region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": region}}))
    except bexc.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code != "BucketAlreadyOwnedByYou":
            raise UsageError(f"could not create the state bucket {bucket}: {code}: "
                             f"{exc.response.get('Error', {}).get('Message', '')}",
                             "Check the credentials may create buckets, or pass --state-url "
                             "s3://BUCKET/PATH of a bucket the team has.") from None
        return
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [
        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})


def _create_gcs_bucket(bucket: str, settings: Mapping[str, str]) -> None:
    """A private (uniform access, public access prevented), versioned GCS bucket, unless the
    team made it already. (The GCS emulator keeps no versions: there it is not versioned.)"""
    import os

    from google.api_core import exceptions as api_exc
    from google.cloud import storage

    from dstack.stacks.credentials import gcp_credentials

    creds = gcp_credentials(settings, "Pass --credentials FILE (a service account key), or "
                                      "run `gcloud auth application-default login`.")
    client = storage.Client(project=settings["project"], credentials=creds)
    found = client.bucket(bucket)
    found.iam_configuration.uniform_bucket_level_access_enabled = True
    found.iam_configuration.public_access_prevention = "enforced"
    found.versioning_enabled = not os.environ.get("STORAGE_EMULATOR_HOST")
    try:
        client.create_bucket(found, location=settings.get("region"))
    except api_exc.Conflict:
        return
    except api_exc.GoogleAPIError as exc:
        raise UsageError(f"could not create the state bucket {bucket}: {exc}",
                         "Check the credentials may create buckets, or pass --state-url "
                         "gs://BUCKET/PATH of a bucket the team has.") from None


def state_store(profile: Profile) -> Store | None:
    """The profile's Pulumi state as a store, when it is in a bucket (None otherwise)."""
    url = profile.state_url or ""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        query = {k: v for k, v in parse_qsl(parsed.query) if k in ("region", "profile")}
    elif parsed.scheme == "gs":
        project = profile.settings.get("project")
        query = {"project": str(project)} if project else {}
    else:
        return None
    base = f"{parsed.scheme}://{parsed.netloc}{parsed.path}"
    return open_store(f"{base}?{urlencode(query)}" if query else base)


def passphrase_copy(home: Path, state: str) -> Path:
    """Where a home keeps its copy of the passphrase of the team state at `state` (named
    after the state, so a profile added again with another state gets that one's)."""
    return home / "secrets" / f"pulumi-passphrase-{hashlib.sha256(state.encode()).hexdigest()[:16]}"


def team_passphrase(store: Store, copy: Path) -> Path:
    """The file holding the team's passphrase: `copy`, fetched (or created once for the whole
    team) from the state store."""
    if copy.exists():
        return copy
    store.create_json(PASSPHRASE_KEY, {"version": 1, "passphrase": secrets.token_urlsafe(32)})
    try:
        passphrase = str(store.get_json(PASSPHRASE_KEY)["passphrase"])
    except (NotFoundError, KeyError) as exc:
        raise StoreError(f"the team's Pulumi passphrase at {store.url}/{PASSPHRASE_KEY} "
                         f"cannot be read: {exc}",
                         "Check the credentials may read the state bucket.") from None
    write_private(copy, (passphrase + "\n").encode())
    return copy


def lock_keys(store: Store) -> dict[str, list[str]]:
    """Stack name → the keys of its engine locks in the state store."""
    prefix = f".pulumi/locks/{ORGANIZATION}/{PROJECT_NAME}/"
    found: dict[str, list[str]] = {}
    for key in store.list(prefix):
        stack, _, rest = key[len(prefix):].partition("/")
        if rest.endswith(".json"):
            found.setdefault(stack, []).append(key)
    return found


def lock_is_stale(lock: Mapping[str, object], timeout_s: float, run_gone: bool,
                  now: float) -> bool:
    """Whether an engine lock may be cleared: this host's engine is dead, or another host's
    lock is older than `timeout_s` and its run is gone."""
    try:
        pid, host = int(str(lock["pid"])), str(lock.get("hostname"))
        at = datetime.fromisoformat(str(lock["timestamp"]).replace("Z", "+00:00"))
    except (KeyError, ValueError, TypeError):
        return False
    if host == socket.gethostname():
        return not process_alive(pid, None)
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    return run_gone and now - at.timestamp() > timeout_s


def clear_stale_bucket_locks(store: Store, timeout_s: float, run_gone: Callable[[str], bool],
                             now: float) -> list[str]:
    """Remove the stale engine locks (`lock_is_stale`) in the state store; their stacks.
    `run_gone(stack)` says whether the run of a stack is gone (a workspace stack: never)."""
    cleared = []
    for stack, keys in sorted(lock_keys(store).items()):
        for key in keys:
            try:
                lock = json.loads(store.get_bytes(key))
            except (NotFoundError, StoreError, ValueError):
                continue
            if isinstance(lock, dict) and lock_is_stale(lock, timeout_s, run_gone(stack), now):
                store.delete(key)
                cleared.append(stack)
    return cleared

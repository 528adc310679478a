"""When another machine's engine lock in a team's state may be cleared, the state bucket's
name, and the team's passphrase (one for the whole team, fetched once per machine)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dstack.config.profiles import Profile
from dstack.stacks.shared_state import (
    PASSPHRASE_KEY,
    clear_stale_bucket_locks,
    lock_is_stale,
    state_bucket_name,
    state_store,
    team_passphrase,
)
from dstack.store.local import LocalStore

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)


def lock(host: str, pid: int, age_s: float) -> dict[str, object]:
    """A lock as Pulumi's bucket backend writes it."""
    at = (NOW - timedelta(seconds=age_s)).isoformat().replace("+00:00", "Z")
    return {"pid": pid, "username": "u", "hostname": host, "timestamp": at}


def dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return int(child.stdout)


def test_another_hosts_lock_is_stale_only_when_old_and_its_run_gone() -> None:
    now = NOW.timestamp()
    assert lock_is_stale(lock("elsewhere", 1, 3600), 1800, True, now)
    assert not lock_is_stale(lock("elsewhere", 1, 3600), 1800, False, now)  # run alive
    assert not lock_is_stale(lock("elsewhere", 1, 60), 1800, True, now)  # lock young


def test_this_hosts_lock_is_stale_when_its_engine_is_dead() -> None:
    here, now = socket.gethostname(), NOW.timestamp()
    assert lock_is_stale(lock(here, dead_pid(), 0), 1800, False, now)
    import os
    assert not lock_is_stale(lock(here, os.getpid(), 9999), 1800, True, now)


def test_a_lock_that_does_not_parse_is_never_cleared() -> None:
    assert not lock_is_stale({"pid": "x", "hostname": "h"}, 0, True, NOW.timestamp())


def test_only_stale_locks_are_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "state")
    base = ".pulumi/locks/organization/dstack"
    store.put_bytes(f"{base}/run-a-1/x.json", json.dumps(lock("elsewhere", 1, 7200)).encode())
    store.put_bytes(f"{base}/run-b-1/y.json", json.dumps(lock("elsewhere", 1, 7200)).encode())
    store.put_bytes(f"{base}/workspace-ci/z.json",
                    json.dumps(lock("elsewhere", 1, 7200)).encode())
    cleared = clear_stale_bucket_locks(store, 1800, lambda s: s == "run-a-1", NOW.timestamp())
    assert cleared == ["run-a-1"]
    assert store.list(".pulumi/locks/") == [f"{base}/run-b-1/y.json",
                                           f"{base}/workspace-ci/z.json"]


def test_the_state_bucket_is_named_after_the_workspace_bucket() -> None:
    assert state_bucket_name("dstack-123-us-east-1-ci") == "dstack-123-us-east-1-ci-state"
    long = state_bucket_name("b" * 63)
    assert len(long) <= 63 and long.endswith("-state")


def test_state_store_reads_the_profiles_bucket_url() -> None:
    s3 = Profile(name="ci", backend="aws",
                 state_url="s3://team-state/state?region=eu-west-1&awssdk=v2")
    store = state_store(s3)
    assert store is not None and store.url.startswith("s3://team-state/state")
    assert state_store(Profile(name="ci", backend="aws")) is None
    assert state_store(Profile(name="ci", backend="aws", state_url="file:///tmp/x")) is None


def test_one_passphrase_for_the_whole_team(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "state")
    copies = [tmp_path / f"home{i}" / "pp" for i in range(4)]
    threads = [threading.Thread(target=team_passphrase, args=(store, c)) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    texts = {c.read_text() for c in copies}
    assert len(texts) == 1 and texts == {store.get_json(PASSPHRASE_KEY)["passphrase"] + "\n"}
    assert all(c.stat().st_mode & 0o777 == 0o600 for c in copies)


def test_a_gcp_profiles_key_file_is_what_its_store_signs_in_with(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without it, a user with `--credentials KEY` and no application-default login could not
    reach the bucket (or a teammate's store would act as whoever else is logged in)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from dstack.run.context import Context

    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    key = tmp_path / "alice.json"
    key.write_text(json.dumps({
        "type": "service_account", "project_id": "team-proj", "private_key_id": "1",
        "private_key": pem, "client_email": "alice@team-proj.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": "http://127.0.0.1:9/token"}))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "someone-else.json"))
    profile = Profile(name="ci", backend="gcp", settings={
        "project": "team-proj", "credentials": str(key),
        "store_url": "gs://dstack-team-proj-ci?project=team-proj"})
    ctx = Context(profile=profile, home=tmp_path / "home")
    workspace = tmp_path / "home" / "pulumi" / "workspace-ci.json"
    workspace.parent.mkdir(parents=True)
    workspace.write_text("{}")  # the workspace is up: the store is the bucket's, not pending
    store = ctx.store
    assert store.client._credentials.service_account_email == \
        "alice@team-proj.iam.gserviceaccount.com"  # type: ignore[attr-defined]


class BusyEngine:
    """An engine whose workspace stack a teammate's engine holds for `busy` more calls."""

    def __init__(self, busy: int) -> None:
        self.busy, self.calls = busy, 0

    def up(self, name: str, program: object) -> tuple[dict[str, object], list[object]]:
        from dstack.errors import StackBusyError

        self.calls += 1
        if self.calls <= self.busy:
            raise StackBusyError(f"stack {name} is locked by another engine")
        return {"bucket": "dstack-b"}, []


def test_a_first_run_waits_while_a_teammate_brings_the_workspace_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dstack.errors import StackBusyError
    from dstack.stacks import cloud
    from dstack.stacks.aws import AwsBackend

    monkeypatch.setattr(cloud.time, "sleep", lambda _s: None)
    profile = Profile(name="ci", backend="aws", settings={"region": "us-east-1"})
    backend = AwsBackend(profile, tmp_path / "home")
    backend.__dict__["engine"] = engine = BusyEngine(busy=2)
    assert backend.ensure_workspace() == {"bucket": "dstack-b"} and engine.calls == 3
    monkeypatch.setattr(cloud, "WORKSPACE_WAIT_S", -1.0)
    (tmp_path / "home" / "pulumi" / "workspace-ci.json").unlink()
    backend.__dict__["engine"] = BusyEngine(busy=1)
    with pytest.raises(StackBusyError):
        backend.ensure_workspace()

"""When a stack may be created by writing its files, and what is written (no engine here:
`tests/integration/test_stack_files.py` has the engine take such stacks)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from dstack.stacks.stack_files import (
    checkpoint_path,
    config_path,
    create_stack,
    quick_state,
    remember_salt,
)

SALT = "v1:c4iECmLSqsQ=:v1:K2MrrsSe/rgaoB8e:xI+H9iUPfXOZ1EFGSCVe084w9L+mvQ=="


@pytest.fixture
def state(tmp_path: Path) -> Path:
    folder = tmp_path / "state"
    (folder / ".pulumi").mkdir(parents=True)
    (folder / ".pulumi" / "meta.yaml").write_text("version: 1\n")
    return folder


def test_only_a_local_per_project_state_written_whole_qualifies(state: Path) -> None:
    url = f"file://{state}?metadata=skip"
    assert quick_state(url, state)
    assert not quick_state(f"file://{state}", state)  # sidecars would be expected
    assert not quick_state(f"file://{state}?metadata=keep", state)
    assert not quick_state("s3://bucket/state", None)
    (state / ".pulumi" / "meta.yaml").write_text("version: 2\n")
    assert not quick_state(url, state)
    (state / ".pulumi" / "meta.yaml").unlink()
    assert not quick_state(url, state)  # the engine lays a new state out first


def _learned(tmp_path: Path, passphrase: bytes = b"p1\n") -> tuple[Path, Path, Path]:
    work, secret = tmp_path / "project", tmp_path / "passphrase"
    work.mkdir(exist_ok=True)
    secret.write_bytes(passphrase)
    config_path(work, "first").write_text(f"encryptionsalt: {SALT}\n")
    templates = tmp_path / "salts.json"
    remember_salt(templates, secret, work, "first")
    return templates, secret, work


def test_a_stack_gets_the_salt_the_engine_wrote_for_its_passphrase(
        tmp_path: Path, state: Path) -> None:
    templates, secret, work = _learned(tmp_path, b"hunter2\n")
    kept = templates.read_text()
    for derived in (b"hunter2\n", b"hunter2"):  # nothing a guess could be checked against
        assert derived.decode().strip() not in kept
        assert hashlib.sha256(derived).hexdigest() not in kept
        assert hashlib.md5(derived).hexdigest() not in kept
    assert create_stack(templates, secret, work, state, "run-a") is True
    assert config_path(work, "run-a").read_text() == f"encryptionsalt: {SALT}\n"
    doc = json.loads(checkpoint_path(state, "run-a").read_text())
    assert doc == {"version": 3,
                   "checkpoint": {"stack": "organization/dstack/run-a", "latest": None}}
    assert [p.name for p in checkpoint_path(state, "run-a").parent.iterdir()] == ["run-a.json"]


def test_an_existing_stack_is_not_touched(tmp_path: Path, state: Path) -> None:
    templates, secret, work = _learned(tmp_path)
    checkpoint = checkpoint_path(state, "run-a")
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_text('{"version":3,"checkpoint":{"latest":{"resources":[]}}}')
    config_path(work, "run-a").write_text("encryptionsalt: v1:other\n")
    assert create_stack(templates, secret, work, state, "run-a") is False
    assert config_path(work, "run-a").read_text() == "encryptionsalt: v1:other\n"
    assert "resources" in checkpoint.read_text()


def test_without_a_salt_for_this_passphrase_the_engine_must_create_it(
        tmp_path: Path, state: Path) -> None:
    templates, secret, work = _learned(tmp_path)
    secret.write_bytes(b"changed\n")
    assert create_stack(templates, secret, work, state, "run-a") is None
    assert create_stack(tmp_path / "none.json", secret, work, state, "run-a") is None
    assert not config_path(work, "run-a").exists()
    assert not checkpoint_path(state, "run-a").exists()


def test_a_config_without_a_salt_teaches_nothing(tmp_path: Path) -> None:
    work, secret = tmp_path / "project", tmp_path / "passphrase"
    work.mkdir()
    secret.write_bytes(b"p\n")
    config_path(work, "s").write_text("secretsprovider: awskms://alias/x\n")
    remember_salt(tmp_path / "salts.json", secret, work, "s")
    remember_salt(tmp_path / "salts.json", secret, work, "missing")
    assert not (tmp_path / "salts.json").exists()

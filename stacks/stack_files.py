"""A stack of a local file state created by writing its two files, as `pulumi stack init`
would, without starting an engine.

`pulumi stack init` costs a run about 0.27 s before its job can start: the engine's start
and its key derivation from the passphrase (PBKDF2, 1,000,000 rounds), which it needs only
to write an `encryptionsalt` into the stack's config file. What it leaves is two files:

- `Pulumi.<stack>.yaml` beside the project's `Pulumi.yaml`: `encryptionsalt: v1:<salt>:
  v1:<nonce>:<"pulumi" sealed with the key>`, which names the salt and lets the engine
  check the passphrase;
- `.pulumi/stacks/dstack/<stack>.json` in the state folder (project mode, `meta.yaml`
  version 1): a version-3 checkpoint of the stack with no deployment yet.

The salt may be the same for every stack of one passphrase (the key stays secret with the
passphrase; each value is sealed with a fresh nonce), so the salt of the first `stack init`
the engine runs for a passphrase file is remembered (`remember_salt`, under the file's path,
inode, size and mtime: nothing derived from the passphrase) and later stacks of that file are
created here (`create_stack`). The engine takes such a stack as its own:
`tests/integration/test_stack_files.py` brings one up, destroys and removes it with the real
engine, and checks the files against what `pulumi stack init` writes, so an engine that
changes them fails there.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from urllib.parse import parse_qsl

from dstack.files import create_whole
from dstack.home import private_dir, write_private
from dstack.stacks.file_state import (
    ATOMIC_WRITES,
    PROJECT_NAME,
    qualified_stack_name,
)

CHECKPOINT_VERSION = 3
"""The checkpoint format the engine writes (`apitype.DeploymentSchemaVersionCurrent`'s
envelope)."""
STATE_LAYOUT = "version: 1"
"""The state folder's `.pulumi/meta.yaml` when stacks are kept per project."""
SALT_KEY = "encryptionsalt"


def config_path(work_dir: Path, stack: str) -> Path:
    """The stack's config file beside the project's `Pulumi.yaml`."""
    return work_dir / f"Pulumi.{stack}.yaml"


def checkpoint_path(state_dir: Path, stack: str) -> Path:
    """The stack's checkpoint in a file state kept per project."""
    return state_dir / ".pulumi" / "stacks" / PROJECT_NAME / f"{stack}.json"


def quick_state(backend_url: str, state_dir: Path | None) -> bool:
    """Whether stacks of this state may be created here: a local folder whose files appear
    whole (`metadata=skip`: no sidecars to write) and that the engine has laid out per
    project already."""
    if state_dir is None:  # not a local folder (`file_state.state_folder`)
        return False
    if ATOMIC_WRITES not in parse_qsl(backend_url.partition("?")[2], keep_blank_values=True):
        return False
    try:
        meta = (state_dir / ".pulumi" / "meta.yaml").read_text()
    except OSError:
        return False
    return [line.strip() for line in meta.splitlines() if line.strip()] == [STATE_LAYOUT]


def _fingerprint(passphrase_file: Path) -> str | None:
    """The passphrase file as it is now (path, inode, size, mtime): another file, or one
    written again, is another passphrase. Nothing derived from the passphrase itself is kept:
    a fast hash of it would let a weak one be guessed far faster than Pulumi's PBKDF2 allows."""
    try:
        st = passphrase_file.stat()
    except OSError:
        return None
    return f"{passphrase_file.resolve()}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}"


def _salts(templates: Path) -> dict[str, str]:
    try:
        doc = json.loads(templates.read_bytes())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in doc.items() if isinstance(v, str)} if isinstance(doc, dict) else {}


def _salt_of(config: Path) -> str | None:
    """The `encryptionsalt` of a stack's config file, if it has one."""
    with contextlib.suppress(OSError):
        for line in config.read_text().splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == SALT_KEY and value.strip().startswith("v1:"):
                return value.strip()
    return None


def remember_salt(templates: Path, passphrase_file: Path, work_dir: Path, stack: str) -> None:
    """Keep the salt the engine wrote for `stack` as the one for its passphrase."""
    salt, key = _salt_of(config_path(work_dir, stack)), _fingerprint(passphrase_file)
    if salt is None or key is None:
        return
    salts = _salts(templates)
    if salts.get(key) != salt:
        write_private(templates, json.dumps({**salts, key: salt}, indent=1).encode())


def create_stack(templates: Path, passphrase_file: Path, work_dir: Path, state_dir: Path,
                 stack: str) -> bool | None:
    """Create `stack` by writing its files: True when created, False when it existed
    already, None when it cannot be done here (no salt known for this passphrase yet), so
    that the engine must."""
    key = _fingerprint(passphrase_file)
    salt = _salts(templates).get(key) if key else None
    if salt is None:
        return None
    checkpoint = checkpoint_path(state_dir, stack)
    if checkpoint.exists():
        return False
    # The config first: a stack the engine can see always has the salt of its passphrase.
    write_private(config_path(work_dir, stack), f"{SALT_KEY}: {salt}\n".encode())
    private_dir(checkpoint.parent)
    doc = {"version": CHECKPOINT_VERSION,
           "checkpoint": {"stack": qualified_stack_name(stack), "latest": None}}
    return create_whole(checkpoint, json.dumps(doc, separators=(",", ":")).encode(),
                        mode=0o600)

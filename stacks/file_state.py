"""Pulumi's file state backend after an engine died: stale locks and cut-short checkpoints.

The file backend keeps stack `S` of project `P` in `.pulumi/stacks/P/S.json`, beside a
`S.json.attrs` sidecar (content type and MD5). To save a checkpoint the engine copies the
file to `S.json.bak`, writes the new one to `S.json.<hex>.tmp`, rewrites the sidecar, then
renames the temp file over `S.json`; all the while it holds a lock file in
`.pulumi/locks/organization/P/S/`. An engine killed between those steps leaves its lock, a
temp file and an empty sidecar, and Pulumi then refuses the stack ("failed to load
checkpoint: EOF") until someone repairs it by hand. This module does that repair, only for
stacks whose lock names a dead engine of this host, and before it removes the lock: no other
engine can take the stack meanwhile.

The sidecar is also why a live engine could fail another: it is rewritten in place (emptied,
then filled), so an engine reading the stack at that moment (a second `dstack gc`, `pulumi
stack ls`) failed with the same EOF. `state_url` therefore opens every file state with
`metadata=skip`: checkpoints are then written to a temp file and renamed, nothing else, and a
reader sees the old file or the new one. Sidecars of older states stay and are still read
(Pulumi uses none of what they hold).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from dstack.files import write_whole
from dstack.procs import process_alive, session_members

ATTRS = ".attrs"
PROJECT_NAME = "dstack"
"""The Pulumi project every dstack stack belongs to."""
ORGANIZATION = "organization"
"""The organization of every stack in a DIY state backend (file, s3, gs, azblob): the only
kind a profile may name."""


def qualified_stack_name(stack: str) -> str:
    """`organization/dstack/<stack>`: the name `pulumi stack ls` shows, which works from any
    folder (a bare name needs the project's Pulumi.yaml in the current one)."""
    return f"{ORGANIZATION}/{PROJECT_NAME}/{stack}"


FILE_SCHEME = "file://"
ATOMIC_WRITES = ("metadata", "skip")
"""The file backend's query parameter that keeps it from writing sidecars (see above)."""


def state_url(home: Path, backend_url: str | None) -> str:
    """The state backend's URL: the profile's, else a folder under the dstack home; a file
    state gets `metadata=skip` unless its URL sets `metadata` itself."""
    url = backend_url or f"{FILE_SCHEME}{home / 'state'}"
    if not url.startswith(FILE_SCHEME):
        return url
    path, _, query = url.partition("?")
    params = parse_qsl(query, keep_blank_values=True)
    if not any(key == ATOMIC_WRITES[0] for key, _ in params):
        params.append(ATOMIC_WRITES)
    return f"{path}?{urlencode(params)}"


def state_folder(home: Path, backend_url: str | None) -> Path | None:
    """The folder of the state backend when it is a local one (the default), else None."""
    url = state_url(home, backend_url)
    if not url.startswith(FILE_SCHEME):
        return None
    return Path(url[len(FILE_SCHEME):].partition("?")[0]).expanduser()


def clear_stale_locks(state_dir: Path, project: str) -> list[str]:
    """Remove the locks of dead engines of this host (repairing their stacks first) and
    stop what is left of their sessions; return the names of the stacks they locked."""
    locks = state_dir / ".pulumi" / "locks" / ORGANIZATION / project
    cleared = []
    for lock in sorted(locks.glob("*/*.json")) if locks.is_dir() else []:
        try:
            info = json.loads(lock.read_text())
            pid, host = int(info["pid"]), info.get("hostname")
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host != socket.gethostname() or process_alive(pid, None):
            continue
        # The engine ran as the leader of its own session: what is left in that session
        # (its plugins, e.g. the dynamic provider) goes with it.
        for member in session_members(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGKILL)
        stack = lock.parent.name
        repair_stack(state_dir, project, stack)
        lock.unlink(missing_ok=True)
        Path(f"{lock}{ATTRS}").unlink(missing_ok=True)
        cleared.append(stack)
    return cleared


def repair_stack(state_dir: Path, project: str, stack: str) -> list[str]:
    """Make the checkpoint of `stack` loadable again; return what was done (may be nothing).

    Call it only while no live engine works on the stack. In order: the newest complete temp
    checkpoint newer than the stack file is what the engine was committing, so it becomes the
    stack file (other temp files go); a sidecar that does not parse goes (Pulumi reads a
    missing one as defaults); a stack file that does not parse is restored from its backup.
    """
    folder = state_dir / ".pulumi" / "stacks" / project
    current = folder / f"{stack}.json"
    done: list[str] = []
    temps = sorted(folder.glob(f"{stack}.json.*.tmp"), key=_mtime, reverse=True)
    committed = False
    for tmp in temps:
        newer = not current.exists() or _mtime(tmp) >= _mtime(current)
        if not committed and newer and _is_checkpoint(tmp):
            with contextlib.suppress(FileNotFoundError):
                os.replace(tmp, current)
                Path(f"{current}{ATTRS}").unlink(missing_ok=True)  # its MD5 is stale
                committed = True
                done.append(f"committed the checkpoint {tmp.name} its engine was saving")
            continue
        tmp.unlink(missing_ok=True)
        done.append(f"removed the unfinished checkpoint {tmp.name}")
    for path in (current, folder / f"{stack}.json.bak"):
        sidecar = Path(f"{path}{ATTRS}")
        if sidecar.exists() and not _is_json_object(sidecar):
            sidecar.unlink(missing_ok=True)
            done.append(f"removed the broken {sidecar.name}")
    backup = folder / f"{stack}.json.bak"
    if current.exists() and not _is_checkpoint(current) and _is_checkpoint(backup):
        write_whole(current, backup.read_bytes(), mode=0o600)
        Path(f"{current}{ATTRS}").unlink(missing_ok=True)
        done.append(f"restored {current.name} from {backup.name}")
    return done


def unreadable_stacks(state_dir: Path, project: str) -> list[Path]:
    """Stack files of the project that Pulumi cannot load: not a whole checkpoint, or a
    sidecar that does not parse."""
    folder = state_dir / ".pulumi" / "stacks" / project
    return [path for path in sorted(folder.glob("*.json"))
            if not _is_checkpoint(path) or (Path(f"{path}{ATTRS}").exists()
                                            and not _is_json_object(Path(f"{path}{ATTRS}")))]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _is_json_object(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_bytes()), dict)
    except (OSError, ValueError):
        return False


def _is_checkpoint(path: Path) -> bool:
    """A whole versioned checkpoint: JSON cut short does not parse."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and "version" in doc and "checkpoint" in doc

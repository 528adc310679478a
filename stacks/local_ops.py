"""What the local backend's two resources do, without pulumi: a folder, and the runner process.

Both the lean provider host (`provider_host`, what the engine runs) and the SDK's dynamic
providers (`local_resources`, for an engine whose launcher is Pulumi's own) call these, so
the two agree. Properties are the engine's property bag: plain JSON values, read by key.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

from dstack.errors import DstackError
from dstack.procs import process_alive, process_start_ticks, session_members

RUNNER_STOP_WAIT_S = 30.0
STOP_POLL_S = 0.01
"""How often a stopping runner is looked at: it usually exits within milliseconds."""

Props = Mapping[str, object]
Outs = dict[str, object]


class Operations:
    """One resource type: create it, say which input changes replace it, delete it."""

    replace_on: tuple[str, ...] = ()

    def create(self, props: Props) -> tuple[str, Outs]:
        """Create it; (id, outputs)."""
        raise NotImplementedError

    def replaces(self, olds: Props, news: Props) -> list[str]:
        """The inputs whose change replaces it (every change does: none is updated in place)."""
        return [key for key in self.replace_on if olds.get(key) != news.get(key)]

    def delete(self, props: Props) -> None:
        """Delete it; one already gone counts as deleted."""


class FolderOps(Operations):
    """A folder that exists while the resource does (its content is removed on delete unless
    `keep` is set)."""

    replace_on = ("path",)

    def create(self, props: Props) -> tuple[str, Outs]:
        path = Path(str(props["path"]))
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        return str(path), dict(props)

    def delete(self, props: Props) -> None:
        if not props.get("keep"):
            shutil.rmtree(str(props["path"]), ignore_errors=True)


def stop_runner(pid: int, start_ticks: int | None, wait_s: float = RUNNER_STOP_WAIT_S) -> None:
    """Ask the runner to stop (SIGTERM: it stops the job and syncs), then kill its session."""
    if process_alive(pid, start_ticks):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while process_alive(pid, start_ticks) and time.monotonic() < deadline:
            time.sleep(STOP_POLL_S)
    if start_ticks is None or process_start_ticks(pid) in (None, start_ticks):
        for member in session_members(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGKILL)


def whole(value: object) -> int | None:
    """A whole number the engine may hand back as a float (its numbers are doubles)."""
    return int(value) if isinstance(value, int | float) else None


class RunnerProcessOps(Operations):
    """The runner process of a run: started on create, stopped on delete (its artifacts are
    then salvaged if its job had not ended)."""

    replace_on = ("bootstrap", "workdir")

    def create(self, props: Props) -> tuple[str, Outs]:
        workdir = Path(str(props["workdir"]))
        script = workdir / "bootstrap.sh"
        script.write_text(str(props["bootstrap"]))
        script.chmod(0o700)
        with open(workdir / "runner.log", "ab") as log:
            proc = subprocess.Popen(
                ["bash", str(script)], cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        ticks = process_start_ticks(proc.pid)
        run, store_url = str(props.get("run") or ""), str(props.get("store_url") or "")
        if run and store_url:
            # Where the runner is, in the run's record at once: the CLI records it too once
            # the update is saved, but that CLI may die before (then `dstack ps` needs this).
            instance = {"host": socket.gethostname(), "pid": proc.pid, "start_ticks": ticks,
                        "workdir": str(workdir)}
            from dstack.run.record import update_run  # here: the runner starts before this
            from dstack.store.base import open_store

            with contextlib.suppress(DstackError):
                update_run(open_store(store_url), run, instance=instance)
        return str(proc.pid), {**props, "pid": proc.pid, "start_ticks": ticks}

    def delete(self, props: Props) -> None:
        pid = whole(props.get("pid"))
        if pid:
            stop_runner(pid, whole(props.get("start_ticks")))
        run, store_url = str(props.get("run") or ""), str(props.get("store_url") or "")
        if run and store_url:
            from dstack.runner.salvage import salvage  # here: the host starts without it

            salvage(store_url, run, Path(str(props["workdir"])) / "work")


OPERATIONS: dict[str, Operations] = {"Folder": FolderOps(), "RunnerProcess": RunnerProcessOps()}
"""Each resource type's operations, by the name its type token ends with."""

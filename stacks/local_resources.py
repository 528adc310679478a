"""Python dynamic resources of the local backend: a folder, and the runner process.

The engine runs their providers in `python -m pulumi.dynamic` (the launcher beside the
engine), so they must be importable from this package; they hold no secrets in their state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider

from dstack.errors import DstackError
from dstack.procs import process_alive, process_start_ticks, session_members
from dstack.store.base import open_store

RUNNER_STOP_WAIT_S = 30.0

# A dynamic provider's methods take the resource's properties as pulumi.dynamic declares them
# (and must, to override it): the engine's untyped property bag, read by key.
Props = dict[str, Any]  # type: ignore[explicit-any]  # pulumi.dynamic's property bag, untyped


class FolderProvider(ResourceProvider):
    """A folder that exists while the resource does (its content is removed on delete
    unless `keep` is set)."""

    def create(self, props: Props) -> CreateResult:
        path = Path(props["path"])
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o700)
        return CreateResult(id_=str(path), outs=dict(props))

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        changed = olds.get("path") != news.get("path")
        return DiffResult(changes=changed, replaces=["path"] if changed else [],
                          delete_before_replace=True)

    def delete(self, _id: str, props: Props) -> None:
        if not props.get("keep"):
            shutil.rmtree(props["path"], ignore_errors=True)


class Folder(Resource, module="dstack", name="Folder"):
    """A folder on this machine."""

    path: pulumi.Output[str]

    def __init__(self, name: str, path: str, keep: bool = False,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(FolderProvider(), name, {"path": path, "keep": keep}, opts)


def stop_runner(pid: int, start_ticks: int | None, wait_s: float = RUNNER_STOP_WAIT_S) -> None:
    """Ask the runner to stop (SIGTERM: it stops the job and syncs), then kill its session."""
    if process_alive(pid, start_ticks):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while process_alive(pid, start_ticks) and time.monotonic() < deadline:
            time.sleep(0.1)
    if start_ticks is None or process_start_ticks(pid) in (None, start_ticks):
        for member in session_members(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, signal.SIGKILL)


class RunnerProcessProvider(ResourceProvider):
    """The runner process of a run: started on create, stopped on delete."""

    def create(self, props: Props) -> CreateResult:
        workdir = Path(props["workdir"])
        script = workdir / "bootstrap.sh"
        script.write_text(props["bootstrap"])
        script.chmod(0o700)
        with open(workdir / "runner.log", "ab") as log:
            proc = subprocess.Popen(
                ["bash", str(script)], cwd=workdir, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
            )
        ticks = process_start_ticks(proc.pid)
        if props.get("run") and props.get("store_url"):
            # Where the runner is, in the run's record at once: the CLI records it too once
            # the update is saved, but that CLI may die before (then `dstack ps` needs this).
            instance = {"host": socket.gethostname(), "pid": proc.pid, "start_ticks": ticks,
                        "workdir": str(workdir)}
            from dstack.run.record import update_run  # here: the runner starts before this import

            with contextlib.suppress(DstackError):
                update_run(open_store(props["store_url"]), props["run"], instance=instance)
        return CreateResult(id_=str(proc.pid), outs={**props, "pid": proc.pid,
                                                     "start_ticks": ticks})

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        keys = ("bootstrap", "workdir")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        return DiffResult(changes=bool(changed), replaces=changed, delete_before_replace=True)

    def delete(self, _id: str, props: Props) -> None:
        stop_runner(int(props["pid"]), props.get("start_ticks"))
        if props.get("run") and props.get("store_url"):
            from dstack.runner.salvage import salvage  # here: the provider starts without it

            salvage(props["store_url"], props["run"], Path(props["workdir"]) / "work")


class RunnerProcess(Resource, module="dstack", name="RunnerProcess"):
    """The runner of one run, started from its bootstrap script in its workspace."""

    pid: pulumi.Output[int]
    start_ticks: pulumi.Output[int]

    def __init__(self, name: str, workdir: pulumi.Input[str], bootstrap: str, run: str = "",
                 store_url: str = "", opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(RunnerProcessProvider(), name,
                         {"workdir": workdir, "bootstrap": bootstrap, "run": run,
                          "store_url": store_url, "pid": None, "start_ticks": None}, opts)

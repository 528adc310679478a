"""A harness for end-to-end tests that drive the installed `dstack` command (local backend).

`Dstack` runs the real console script as a subprocess with a private DSTACK_HOME (linked to
the installed engine) in a project folder, and reads what dstack left behind: the store
folder, Pulumi's file state backend and /proc. `check_no_leftovers` lists run stacks that
still hold resources and processes of a dstack home that are still alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dstack.home import dstack_home
from dstack.stacks.engine_install import PULUMI_VERSION, engine_root, is_installed

INSTALLED_HOME = dstack_home()
DSTACK_BIN = Path(sys.executable).with_name("dstack")
RUN_NAME = re.compile(r"^[a-z]+(-[a-z0-9]+)+$")
RUN_RESOURCE_TYPES = ("RunnerProcess", "Folder", "ec2/instance:", "ec2/securityGroup:",
                      "securityGroupIngressRule", "compute/instance:", "compute/firewall:")
"""A run stack holds resources while any of its resource types contains one of these (the
local backend's, then the stand-in clouds')."""
TERMINAL = ("done", "failed", "stopped", "aborted")


def make_home(path: Path) -> Path:
    """A fresh dstack home at `path` whose engine links to the installed one."""
    if not is_installed(INSTALLED_HOME):
        pytest.fail(f"the Pulumi engine {PULUMI_VERSION} is not installed in "
                    f"{engine_root(INSTALLED_HOME)}: run `make engine` first")
    (path / "engine").mkdir(parents=True)
    os.symlink(engine_root(INSTALLED_HOME), path / "engine" / PULUMI_VERSION)
    return path


def write_project(root: Path, workflows: str, files: dict[str, str] | None = None) -> Path:
    """A project folder: `.dstack/workflows.yaml` and the given files (dedented)."""
    (root / ".dstack").mkdir(parents=True, exist_ok=True)
    (root / ".dstack" / "workflows.yaml").write_text(textwrap.dedent(workflows).lstrip())
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(textwrap.dedent(text).lstrip())
    return root


def poll(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


HOMES_IN_TEST: set[Path] = set()
"""Homes used by the current test; every `Dstack` call registers its home here."""


class Dstack:
    """The `dstack` command with one dstack home, run from a project folder."""

    def __init__(self, home: Path, project: Path) -> None:
        self.home = home
        self.project = project

    # -- the command ---------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DSTACK_HOME"] = str(self.home)
        env.pop("PULUMI_BACKEND_URL", None)
        env.pop("PULUMI_HOME", None)
        return env

    def argv(self, *args: str) -> list[str]:
        if DSTACK_BIN.exists():
            return [str(DSTACK_BIN), *args]
        return [sys.executable, "-c", "from dstack.cli.app import main; main()", *args]

    def __call__(self, *args: str, cwd: Path | None = None, timeout: float = 120,
                 expect: int | None = 0) -> subprocess.CompletedProcess[str]:
        """Run `dstack ARGS...`; check its exit code is `expect` (None: any)."""
        HOMES_IN_TEST.add(self.home)
        proc = subprocess.run(self.argv(*args), cwd=cwd or self.project, env=self.env(),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
        if expect is not None:
            assert proc.returncode == expect, (
                f"`dstack {' '.join(args)}` exited {proc.returncode}, expected {expect}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
        return proc

    def json(self, *args: str, **kw: Any) -> Any:
        """`dstack ARGS... --json`, parsed."""
        return json.loads(self(*args, "--json", **kw).stdout)

    def popen(self, *args: str, out: Path, err: Path) -> subprocess.Popen[bytes]:
        """Start `dstack ARGS...` in the background, its output going to files."""
        HOMES_IN_TEST.add(self.home)
        with open(out, "wb") as o, open(err, "wb") as e:
            return subprocess.Popen(self.argv(*args), cwd=self.project, env=self.env(),
                                    stdin=subprocess.DEVNULL, stdout=o, stderr=e)

    def run_detached(self, *args: str) -> str:
        """`dstack run ARGS... -d`; the run name it printed (the only line on stdout)."""
        proc = self("run", *args, "-d")
        lines = proc.stdout.splitlines()
        assert len(lines) == 1 and RUN_NAME.match(lines[0]), proc.stdout
        return lines[0]

    def ps(self, run: str | None = None) -> list[dict[str, Any]]:
        """`dstack ps --json -a` (or of one run)."""
        return self.json("ps", *([run] if run else []), "-a")

    def newest_run(self, workflow: str | None = None) -> dict[str, Any]:
        """The newest row of `ps -a` (of `workflow`)."""
        rows = [r for r in self.ps() if workflow is None or r["workflow"] == workflow]
        assert rows, f"no run of {workflow!r}"
        return rows[0]

    # -- what dstack left behind ---------------------------------------------------------

    def record(self, run: str) -> dict[str, Any]:
        """The run's document, read from the store folder (without the CLI)."""
        return json.loads((self.home / "store" / "runs" / run / "run.json").read_text())

    def wait_record(self, run: str, statuses: tuple[str, ...], timeout: float = 60) -> dict:
        """The run's document once its status is one of `statuses`."""
        def check() -> dict[str, Any] | None:
            with contextlib.suppress(OSError, ValueError):
                doc = self.record(run)
                return doc if doc["status"] in statuses else None
            return None
        return poll(f"run {run} to be {'/'.join(statuses)}", check, timeout)

    def artifact(self, run: str, rel: str) -> Path:
        """Where the store folder keeps artifact `rel` of `run`."""
        return self.home / "store" / "runs" / run / "artifacts" / rel

    def run_names(self) -> set[str]:
        """Names of the runs in the store folder."""
        runs = self.home / "store" / "runs"
        return {p.name for p in runs.iterdir()} if runs.is_dir() else set()

    def stack_files(self) -> dict[str, Path]:
        """Run stack name → its state file in the file backend."""
        return stack_files(self.home)

    def stack_resource_types(self, run: str) -> list[str]:
        """Types of the resources stack `run-<run>` holds now ([] when destroyed)."""
        path = self.stack_files().get(f"run-{run}")
        assert path is not None, f"no stack run-{run} in {self.home / 'state'}"
        return resource_types(path)

    def assert_torn_down(self, run: str) -> None:
        """The run's stack holds nothing and the run's document says so."""
        types = self.stack_resource_types(run)
        assert not run_resources(types), types
        assert self.record(run)["torn_down"] is True

    def pulumi(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The engine's own `pulumi` binary against this home's state backend."""
        env = dict(os.environ)
        env.update({
            "PULUMI_BACKEND_URL": f"file://{self.home / 'state'}",
            "PULUMI_CONFIG_PASSPHRASE_FILE": str(self.home / "secrets" / "pulumi-passphrase"),
            "PULUMI_HOME": str(self.home / "pulumi" / "home"),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
        })
        env.pop("PULUMI_CONFIG_PASSPHRASE", None)
        binary = self.home / "engine" / PULUMI_VERSION / "bin" / "pulumi"
        return subprocess.run([str(binary), *args], cwd=self.home / "pulumi" / "project",
                              env=env, capture_output=True, text=True, timeout=60, check=True)


# -- state and process inspection ------------------------------------------------------------


def stack_files(home: Path) -> dict[str, Path]:
    """Run stack name → its current state file under the file backend of `home`."""
    folder = home / "state" / ".pulumi" / "stacks" / "dstack"
    if not folder.is_dir():
        return {}
    return {p.name[:-len(".json")]: p for p in folder.glob("run-*.json")}


def resource_types(path: Path) -> list[str]:
    """Types of the resources in a stack state file."""
    doc = json.loads(path.read_text())
    latest = (doc.get("checkpoint") or {}).get("latest") or {}
    return [r["type"] for r in latest.get("resources") or []]


def run_resources(types: list[str]) -> list[str]:
    """The types among `types` that are resources of a run (its workspace, its runner)."""
    return [t for t in types if any(kind in t for kind in RUN_RESOURCE_TYPES)]


def home_processes(home: Path) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes that belong to `home`: its runners (cmdline) and
    anything whose working directory is inside it (jobs, engine, dynamic providers)."""
    found = []
    needle = str(home)
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z" or not cmdline:
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            cwd = ""
        is_runner = "dstack.runner" in cmdline and needle in cmdline
        if is_runner or cwd == needle or cwd.startswith(needle + "/"):
            found.append((pid, cmdline))
    return found


def _kill(pids: list[int]) -> None:
    """Clean-up after a failed check: kill the leftover processes this test started."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def check_no_leftovers(home: Path) -> list[str]:
    """Problems: run stacks holding resources, processes of `home` still alive."""
    problems = []
    for name, path in sorted(stack_files(home).items()):
        try:
            types = resource_types(path)
        except (OSError, ValueError) as exc:
            problems.append(f"stack {name}: unreadable state {path}: {exc}")
            continue
        held = run_resources(types)
        if held:
            problems.append(f"stack {name} still holds {held}")
    procs = home_processes(home)
    for pid, cmdline in procs:
        problems.append(f"process {pid} left running: {cmdline[:300]}")
    if procs:
        _kill([pid for pid, _ in procs])
    return problems

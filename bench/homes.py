"""Throw-away dstack homes: a temp folder with `home/` (engine linked to the installed one)
and `project/`, the real `dstack` command run in it, and a clean-up that leaves nothing.

Clean-up runs `dstack gc`, then SIGKILLs by pid whatever process still belongs to the home
(runners named by it, anything whose working directory is inside it: jobs, the engine,
dynamic providers) — all started by this benchmark — and removes the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.command import BenchError, Command, Completed, run
from dstack.home import dstack_home
from dstack.stacks.engine_install import PULUMI_VERSION, engine_bin, engine_root, is_installed

INSTALLED_HOME = dstack_home()
"""The home `make engine` installed the engine into (read before any scenario runs)."""
DSTACK_BIN = Path(sys.executable).with_name("dstack")
RUN_RESOURCE_TYPES = ("RunnerProcess", "Folder")


def log(message: str) -> None:
    """Progress of the benchmark, on stderr."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class BenchHome:
    """A temp folder holding a dstack home and a project, removed by `close`."""

    def __init__(self, label: str, base: Path | None = None, keep: bool = False) -> None:
        if not is_installed(INSTALLED_HOME):
            raise BenchError(f"the Pulumi engine {PULUMI_VERSION} is not installed in "
                             f"{engine_root(INSTALLED_HOME)}: run `make engine` first")
        self.root = Path(tempfile.mkdtemp(prefix=f"dstack-bench-{label}-", dir=base))
        self.home = self.root / "home"
        self.project = self.root / "project"
        self.keep = keep
        (self.home / "engine").mkdir(parents=True)
        os.symlink(engine_root(INSTALLED_HOME), self.home / "engine" / PULUMI_VERSION)
        self.project.mkdir()

    def __enter__(self) -> BenchHome:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # -- the project and the command -------------------------------------------------------

    def write_project(self, workflows: str, files: dict[str, str]) -> None:
        """`.dstack/workflows.yaml` and the given files (dedented) in the project folder."""
        (self.project / ".dstack").mkdir(exist_ok=True)
        (self.project / ".dstack" / "workflows.yaml").write_text(
            textwrap.dedent(workflows).lstrip())
        for rel, text in files.items():
            (self.project / rel).write_text(textwrap.dedent(text).lstrip())

    def env(self) -> dict[str, str]:
        """The environment of every command: this home, no inherited Pulumi settings."""
        env = dict(os.environ)
        env["DSTACK_HOME"] = str(self.home)
        for name in ("PULUMI_BACKEND_URL", "PULUMI_HOME", "PULUMI_CONFIG_PASSPHRASE",
                     "PULUMI_CONFIG_PASSPHRASE_FILE"):
            env.pop(name, None)
        return env

    def argv(self, *args: str) -> list[str]:
        """The real `dstack` console script (or the module, when the script is missing)."""
        if DSTACK_BIN.exists():
            return [str(DSTACK_BIN), *args]
        return [sys.executable, "-c", "from dstack.cli.app import main; main()", *args]

    def launch(self, *args: str, watch_rss: bool = False) -> Command:
        """Start `dstack ARGS...` in the project folder."""
        return Command(self.argv(*args), self.project, self.env(), watch_rss)

    def dstack(self, *args: str, timeout: float = 300.0, check: bool = True) -> Completed:
        """Run `dstack ARGS...` to its end; BenchError when it fails and `check` is set."""
        done = run(self.argv(*args), self.project, self.env(), timeout)
        return done.check(f"dstack {' '.join(args)}") if check else done

    def pulumi_env(self) -> dict[str, str]:
        """The environment for the engine binary itself."""
        env = self.env()
        env.update({"PULUMI_HOME": str(self.home / "pulumi" / "home"),
                    "PULUMI_SKIP_UPDATE_CHECK": "true"})
        return env

    def pulumi_bin(self) -> Path:
        """The engine binary of this home (the installed one, through the link)."""
        return Path(engine_bin(self.home)) / "pulumi"

    # -- what dstack left behind ---------------------------------------------------------

    @property
    def store(self) -> Path:
        """The local store folder."""
        return self.home / "store"

    def run_names(self) -> set[str]:
        """Names of the runs in the store."""
        runs = self.store / "runs"
        return {p.name for p in runs.iterdir()} if runs.is_dir() else set()

    def run_doc(self, run: str) -> dict[str, Any]:
        """The run's document, read from the store folder."""
        doc: dict[str, Any] = json.loads((self.store / "runs" / run / "run.json").read_text())
        return doc

    def wait_finished(self, run: str, timeout: float) -> dict[str, Any]:
        """The run's document once it has a terminal status; BenchError after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError, ValueError):
                doc = self.run_doc(run)
                if doc["status"] in ("done", "failed", "stopped", "aborted"):
                    return doc
            if time.monotonic() > deadline:
                raise BenchError(f"run {run} did not finish within {timeout:.0f}s")
            time.sleep(0.1)

    def stacks_holding_resources(self) -> list[str]:
        """Run stacks whose state still holds a runner or folder."""
        folder = self.home / "state" / ".pulumi" / "stacks" / "dstack"
        held = []
        for path in sorted(folder.glob("run-*.json")) if folder.is_dir() else []:
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                held.append(f"{path.stem} (unreadable state)")
                continue
            latest = (doc.get("checkpoint") or {}).get("latest") or {}
            types = [r["type"] for r in latest.get("resources") or []]
            if any(k in t for t in types for k in RUN_RESOURCE_TYPES):
                held.append(path.stem)
        return held

    def processes(self) -> list[tuple[int, str]]:
        """(pid, cmdline) of live processes that belong to this home."""
        found = []
        needle = str(self.root)
        for entry in Path("/proc").glob("[0-9]*"):
            pid = int(entry.name)
            if pid == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace").strip()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state == "Z" or not cmdline:
                continue
            try:
                cwd = os.readlink(entry / "cwd")
            except OSError:
                cwd = ""
            runner = "dstack.runner" in cmdline and needle in cmdline
            if runner or cwd == needle or cwd.startswith(needle + "/"):
                found.append((pid, cmdline))
        return found

    def leftovers(self) -> list[str]:
        """Problems: run stacks holding resources, processes of this home still alive."""
        problems = [f"stack {s} still holds resources" for s in self.stacks_holding_resources()]
        problems += [f"process {pid} still runs: {cmd[:160]}" for pid, cmd in self.processes()]
        return problems

    def close(self) -> None:
        """`dstack gc`, kill what still runs in this home, remove the folder."""
        if (self.home / "state").is_dir():
            with contextlib.suppress(BenchError, OSError):
                self.dstack("gc", timeout=180, check=False)
        for pid, _cmd in self.processes():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if not self.keep:
            shutil.rmtree(self.root, ignore_errors=True)
        else:
            log(f"kept {self.root}")

"""The one module that imports `pulumi.automation`: stacks of the `dstack` project.

Every call runs the engine from the dstack home with: the state backend (a `file://` folder
under the dstack home unless a profile names another URL), `PULUMI_HOME` under the dstack
home, no update checks, this interpreter for Python dynamic providers, and a passphrase
secrets provider whose passphrase is generated once into a 0600 file. Pulumi's errors are
turned into dstack errors that say what to do.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pulumi import automation as auto
from pulumi.automation import errors as auto_errors
from pulumi.automation._cmd import CommandResult, OnOutput
from pulumi.automation._stack import StackInitMode
from pulumi.automation.events import EngineEvent, OpType
from semver import VersionInfo

from dstack.config.backends import ResourceChange, StackInfo, UpdateRecord
from dstack.errors import BackendError, EngineMissingError, NotFoundError, StackBusyError
from dstack.home import private_dir, secret_file, write_private
from dstack.stacks.engine_install import (
    PULUMI_VERSION,
    engine_bin,
    engine_root,
    is_installed,
)
from dstack.stacks.file_state import (
    PROJECT_NAME,
    qualified_stack_name,
    state_folder,
    state_url,
    unreadable_stacks,
)

PROJECT_YAML = (
    "name: dstack\n"
    "runtime: python\n"
    "description: Ephemeral run stacks and long-lived workspace stacks of dstack.\n"
)
"""The project every stack belongs to; the repository's Pulumi.yaml holds the same text."""

Program = Callable[[], None]
OutputFn = Callable[[str], None]

_CHANGE_OPS = {OpType.CREATE: "create", OpType.DELETE: "delete", OpType.UPDATE: "update",
               OpType.REPLACE: "replace", OpType.CREATE_REPLACEMENT: "create",
               OpType.DELETE_REPLACED: "delete"}


def install_official(root: str, version: str) -> None:
    """Run Pulumi's official installer into `root` (used by `engine_install`)."""
    auto.PulumiCommand.install(root=root, version=VersionInfo.parse(version))


class _Stack(auto.Stack):
    """A stack that saves engine calls (each starts the engine, about 0.3 s).

    It never runs `pulumi stack select`: every command names the stack with `--stack`, and a
    missing stack makes the command itself fail. With `create`, it runs `stack init` and
    takes "already exists" as done (for a new run stack: one call, not a failed select and
    an init). `up`/`destroy` skip the `stack output` and `stack history` calls the
    Automation API makes afterwards: dstack reads the outputs and changes from the update's
    own event stream instead.
    """

    def __init__(self, name: str, workspace: auto.LocalWorkspace, create: bool) -> None:
        self.name = name
        self.workspace = workspace
        self._mode = StackInitMode.SELECT
        if create:
            with contextlib.suppress(auto_errors.StackAlreadyExistsError):
                workspace.create_stack(name)

    def outputs(self) -> auto.OutputMap:
        return {}

    def info(self, show_secrets: bool = True) -> auto.UpdateSummary:
        # A placeholder: the Automation API insists on a summary; dstack does not read it.
        return auto.UpdateSummary(kind="update", start_time=datetime.now(timezone.utc),
                                  message="", environment={}, config={}, result="succeeded")


class _EngineCommand(auto.PulumiCommand):
    """The engine command, run so that the death of the dstack process never kills it.

    The Automation API reads the engine's stdout and stderr through pipes. When dstack is
    killed, the engine's next write to them raises SIGPIPE, and Go programs die of SIGPIPE on
    stdout and stderr whatever their disposition: the engine then dies in the middle of
    saving a checkpoint and leaves the stack unreadable. Here the engine writes to files
    that dstack follows, runs in a session of its own (a Ctrl-C for dstack does not reach it
    mid-update), and reads nothing. It also skips the second `pulumi version` the Automation
    API runs (each engine start costs about 0.3 s): the install stamp says the version.
    """

    def __init__(self, binary: Path, version: str, output_dir: Path) -> None:
        self.command = str(binary)
        self.version = VersionInfo.parse(version)
        self.output_dir = output_dir

    def run(self, args: list[str], cwd: str, additional_env: Mapping[str, str],
            on_output: OnOutput | None = None,
            on_error: OnOutput | None = None) -> CommandResult:
        if "--non-interactive" not in args:
            args.insert(0, "--non-interactive")
        env = {**os.environ, **additional_env, "PULUMI_AUTOMATION_API": "true"}
        stem = self.output_dir / f"{os.getpid()}-{threading.get_ident()}-{time.time_ns()}"
        out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
        done = threading.Event()
        stdout: list[str] = []
        stderr: list[str] = []
        try:
            with out.open("wb") as out_f, err.open("wb") as err_f:
                proc = subprocess.Popen([self.command, *args], cwd=cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out_f,
                                        stderr=err_f, start_new_session=True)
            followers = [threading.Thread(target=_follow, args=(path, done, cb, lines))
                         for path, cb, lines in ((out, on_output, stdout),
                                                 (err, on_error, stderr))]
            for t in followers:
                t.start()
            try:
                code = proc.wait()
            finally:
                done.set()
                for t in followers:
                    t.join()
        finally:
            out.unlink(missing_ok=True)
            err.unlink(missing_ok=True)
        result = CommandResult(stdout="\n".join(stdout), stderr="\n".join(stderr), code=code)
        if code != 0:
            raise auto_errors.create_command_error(result)
        return result


def _follow(path: Path, done: threading.Event, callback: OnOutput | None,
            lines: list[str], poll_s: float = 0.02) -> None:
    """Read the lines of a file another process writes, until `done` and its end."""
    tail = ""
    with path.open(encoding="utf-8", errors="replace") as f:
        while True:
            finished = done.is_set()
            data = f.read()
            if data:
                *complete, tail = (tail + data).split("\n")
                for line in complete:
                    _emit(line, callback, lines)
            elif finished:
                break
            else:
                time.sleep(poll_s)
    if tail:
        _emit(tail, callback, lines)


def _emit(line: str, callback: OnOutput | None, lines: list[str]) -> None:
    line = line.rstrip()
    if callback:
        callback(line)
    lines.append(line)


def _sweep(folder: Path, max_age_s: float = 86400.0) -> None:
    """Remove engine output files of dstack processes that were killed a day ago or more."""
    cutoff = time.time() - max_age_s
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


class Engine:
    """Stacks of the `dstack` project in one state backend, run by the engine in the home."""

    def __init__(self, home: Path, backend_url: str | None = None) -> None:
        self.home = home
        self.backend_url = state_url(home, backend_url)
        self.file_state = state_folder(home, backend_url)
        self.work_dir = home / "pulumi" / "project"
        self.pulumi_home = home / "pulumi" / "home"
        self.passphrase_file = home / "secrets" / "pulumi-passphrase"
        self.output_dir = home / "pulumi" / "output"
        self._command: auto.PulumiCommand | None = None

    # -- set-up --------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        """The environment every engine call runs with (no secret values in it)."""
        path = os.environ.get("PATH", "")
        return {
            "PULUMI_BACKEND_URL": self.backend_url,
            "PULUMI_HOME": str(self.pulumi_home),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_PYTHON_CMD": sys.executable,
            "PULUMI_CONFIG_PASSPHRASE_FILE": str(self.passphrase_file),
            "PATH": f"{engine_bin(self.home)}{os.pathsep}{path}",
        }

    def _prepare(self) -> auto.PulumiCommand:
        if self._command is not None:
            return self._command
        if not is_installed(self.home):
            raise EngineMissingError(
                f"the Pulumi engine {PULUMI_VERSION} is not installed in {engine_bin(self.home)}",
                "Run `make engine` (or `python -m dstack.stacks.engine_install`) to install it.",
            )
        if self.file_state:
            private_dir(self.file_state)
        private_dir(self.pulumi_home)
        private_dir(self.work_dir)
        secret_file(self.passphrase_file)
        project = self.work_dir / "Pulumi.yaml"
        if not project.exists() or project.read_text() != PROJECT_YAML:
            write_private(project, PROJECT_YAML.encode())
        private_dir(self.output_dir)
        _sweep(self.output_dir)
        self._command = _EngineCommand(engine_root(self.home) / "bin" / "pulumi",
                                       PULUMI_VERSION, self.output_dir)
        return self._command

    def _workspace(self, program: Program | None = None) -> auto.LocalWorkspace:
        return auto.LocalWorkspace(
            work_dir=str(self.work_dir),
            pulumi_home=str(self.pulumi_home),
            program=program,
            env_vars=self.env(),
            secrets_provider="passphrase",
            pulumi_command=self._prepare(),
        )

    def _stack(self, name: str, program: Program | None, create: bool) -> auto.Stack:
        ws = self._workspace(program)
        return _Stack(name, ws, create)

    # -- operations ----------------------------------------------------------------------

    def up(
        self, name: str, program: Program, on_output: OutputFn | None = None
    ) -> tuple[dict[str, Any], list[ResourceChange]]:
        """Create (or select) stack `name` and bring it up; return its outputs and changes."""
        with _translated(name, "bring up"):
            stack = self._stack(name, program, create=True)
            changes = _ChangeLog()
            stack.up(on_output=on_output, on_event=changes, color="never",
                     suppress_progress=True, show_secrets=False)
            return changes.outputs, changes.items

    def destroy(
        self, name: str, program: Program, on_output: OutputFn | None = None,
        missing_ok: bool = False,
    ) -> list[ResourceChange]:
        """Destroy every resource of stack `name`, keeping the stack and its history.

        With `missing_ok`, a stack that was never created counts as destroyed (no changes).
        """
        if missing_ok:
            try:
                return self.destroy(name, program, on_output)
            except NotFoundError:
                return []
        with _translated(name, "destroy"):
            stack = self._stack(name, program, create=False)
            changes = _ChangeLog()
            stack.destroy(on_output=on_output, on_event=changes, color="never",
                          suppress_progress=True, show_secrets=False)
            return changes.items

    def remove(self, name: str) -> None:
        """Remove stack `name` and its history (only when it holds no resources)."""
        with _translated(name, "remove"):
            self._workspace().remove_stack(name)

    def list_stacks(self) -> list[StackInfo]:
        """Every stack of the project in the backend."""
        try:
            with _translated("*", "list"):
                summaries = self._workspace().list_stacks()
        except BackendError as exc:
            broken = unreadable_stacks(self.file_state, PROJECT_NAME) if self.file_state else []
            if broken:
                exc.hint = (f"These state files do not load: {', '.join(map(str, broken))}. "
                            "Each has its previous checkpoint beside it (.bak); restore that "
                            "or move the file away, then run `dstack gc` again.")
            raise
        return [
            StackInfo(
                name=s.name.rsplit("/", 1)[-1],
                resource_count=s.resource_count or 0,
                update_in_progress=bool(s.update_in_progress),
                last_update=s.last_update.isoformat() if s.last_update else None,
            )
            for s in summaries
        ]

    def history(self, name: str) -> list[UpdateRecord]:
        """Every update of stack `name`, oldest first, numbered from 1.

        The whole history is asked for (`--page-size 0`: without it the engine lists the 10
        newest). The DIY backends record every update with version 0, so an update's version
        is its place in the history, as Pulumi Cloud numbers them.
        """
        with _translated(name, "read the history of"):
            summaries = self._stack(name, None, create=False).history(page_size=0,
                                                                      show_secrets=False)
        summaries.reverse()  # the engine lists the newest first
        return [
            UpdateRecord(
                version=s.version or number,
                kind=s.kind,
                result=s.result,
                start=s.start_time.isoformat(),
                end=s.end_time.isoformat() if s.end_time else None,
                changes=dict(s.resource_changes or {}),
            )
            for number, s in enumerate(summaries, 1)
        ]

    def history_command(self, name: str) -> str:
        """A shell command that lists stack `name`'s history with this engine and state from
        any folder: the stack's fully qualified name, the state backend and the passphrase's
        file (never the passphrase) in its environment."""
        env = {"PULUMI_BACKEND_URL": self.backend_url,
               "PULUMI_CONFIG_PASSPHRASE_FILE": str(self.passphrase_file)}
        argv = [str(engine_root(self.home) / "bin" / "pulumi"), "stack", "history",
                "--stack", qualified_stack_name(name), "--page-size", "0"]
        return " ".join([*(f"{key}={shlex.quote(value)}" for key, value in env.items()),
                         shlex.join(argv)])

    def resources(self, name: str) -> list[dict[str, Any]]:
        """The resources stack `name` holds now, from its exported state."""
        with _translated(name, "export"):
            deployment = self._workspace().export_stack(name).deployment or {}
        return list(deployment.get("resources") or [])


class _ChangeLog:
    """An `on_event` callback that records each resource the engine changed."""

    def __init__(self) -> None:
        self.items: list[ResourceChange] = []
        self.outputs: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __call__(self, event: EngineEvent) -> None:
        out = event.res_outputs_event
        if out is not None and out.metadata is not None and out.metadata.type == \
                "pulumi:pulumi:Stack" and out.metadata.new is not None:
            self.outputs = dict(out.metadata.new.outputs or {})
        if out is None or out.metadata is None:
            return
        op = _CHANGE_OPS.get(out.metadata.op)
        if op is None or out.metadata.type.startswith(("pulumi:pulumi:", "pulumi:providers:")):
            return
        urn = out.metadata.urn
        with self._lock:
            self.items.append(ResourceChange(op=op, type=out.metadata.type,
                                             name=urn.rsplit("::", 1)[-1]))


@contextmanager
def _translated(stack: str, action: str) -> Iterator[None]:
    """Turn Pulumi's exceptions into dstack errors that say what to do next."""
    try:
        yield
    except auto_errors.ConcurrentUpdateError as exc:
        raise StackBusyError(
            f"stack {stack} is locked by another dstack or pulumi process",
            "Wait for it to finish; if that process is gone, `dstack gc` clears the stale lock.",
        ) from exc
    except auto_errors.StackNotFoundError as exc:
        raise NotFoundError(f"no stack named {stack} in the state backend",
                            "`dstack ps -a` lists the runs there are.") from exc
    except auto_errors.CommandError as exc:
        detail = _last_error_lines(getattr(exc, "stderr", "") or str(exc))
        raise BackendError(
            f"pulumi could not {action} stack {stack}: {detail}",
            "Run the command again with --debug for the engine's full output.",
        ) from exc


def _last_error_lines(text: str, limit: int = 6) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    picked = [ln for ln in lines if "error" in ln.lower()] or lines
    return " | ".join(picked[-limit:])[:1500] or "(no message)"

"""The one module that imports `pulumi.automation`: stacks of the `dstack` project.

Every call runs the engine from the dstack home with: the state backend (a `file://` folder
under the dstack home unless a profile names another URL), `PULUMI_HOME` under the dstack
home, no update checks, this interpreter for Python dynamic providers, and a passphrase
secrets provider whose passphrase is generated once into a 0600 file. Pulumi's errors are
turned into dstack errors that say what to do.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pulumi import automation as auto
from pulumi.automation import errors as auto_errors
from pulumi.automation._stack import StackInitMode
from pulumi.automation.events import EngineEvent, OpType
from semver import VersionInfo

from dstack.backend import ResourceChange, StackInfo, UpdateRecord
from dstack.errors import BackendError, EngineMissingError, NotFoundError, StackBusyError
from dstack.home import private_dir, secret_file, write_private
from dstack.stacks.engine_install import (
    PULUMI_VERSION,
    SESSION_NAME,
    engine_bin,
    engine_root,
    is_installed,
    write_launcher,
)

PROJECT_NAME = "dstack"
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
    """A stack whose `up`/`destroy` skip the two extra engine calls the Automation API makes
    afterwards (`stack output` and `stack history`, about 1 s together): dstack reads the
    outputs and changes from the update's own event stream instead."""

    def outputs(self) -> auto.OutputMap:
        return {}

    def info(self, show_secrets: bool = True) -> auto.UpdateSummary:
        # A placeholder: the Automation API insists on a summary; dstack does not read it.
        return auto.UpdateSummary(kind="update", start_time=datetime.now(timezone.utc),
                                  message="", environment={}, config={}, result="succeeded")


def _command(root: Path, version: str) -> auto.PulumiCommand:
    """The engine command, without running `pulumi version` again when the install stamp
    already says which version it is (each engine start costs about 0.3 s)."""
    cmd = auto.PulumiCommand.__new__(auto.PulumiCommand)
    if not (root / "bin" / SESSION_NAME).exists():
        write_launcher(root / "bin")
    cmd.command = str(root / "bin" / SESSION_NAME)
    cmd.version = VersionInfo.parse(version)
    return cmd


class Engine:
    """Stacks of the `dstack` project in one state backend, run by the engine in the home."""

    def __init__(self, home: Path, backend_url: str | None = None) -> None:
        self.home = home
        self.state_dir = home / "state"
        self.backend_url = backend_url or f"file://{self.state_dir}"
        self.work_dir = home / "pulumi" / "project"
        self.pulumi_home = home / "pulumi" / "home"
        self.passphrase_file = home / "secrets" / "pulumi-passphrase"
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
        if self.backend_url.startswith("file://"):
            private_dir(self.state_dir)
        private_dir(self.pulumi_home)
        private_dir(self.work_dir)
        secret_file(self.passphrase_file)
        project = self.work_dir / "Pulumi.yaml"
        if not project.exists() or project.read_text() != PROJECT_YAML:
            write_private(project, PROJECT_YAML.encode())
        self._command = _command(engine_root(self.home), PULUMI_VERSION)
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
        mode = StackInitMode.CREATE_OR_SELECT if create else StackInitMode.SELECT
        return _Stack(name, ws, mode)

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
        with _translated("*", "list"):
            summaries = self._workspace().list_stacks()
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
        """The updates of stack `name`, oldest first."""
        with _translated(name, "read the history of"):
            summaries = self._stack(name, None, create=False).history(show_secrets=False)
        records = [
            UpdateRecord(
                version=s.version or 0,
                kind=s.kind,
                result=s.result,
                start=s.start_time.isoformat(),
                end=s.end_time.isoformat() if s.end_time else None,
                changes=dict(s.resource_changes or {}),
            )
            for s in summaries
        ]
        records.reverse()  # the engine lists the newest first
        return records

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

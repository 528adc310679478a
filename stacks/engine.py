"""The one module that imports `pulumi.automation`: stacks of the `dstack` project.

Every call runs the engine from the dstack home with: the state backend (a `file://` folder
under the dstack home unless a profile names another URL), `PULUMI_HOME` under the dstack
home, no update checks, this interpreter for Python dynamic providers, and a passphrase
secrets provider whose passphrase is generated once into a 0600 file. Pulumi's errors are
turned into dstack errors that say what to do.

Each operation is one engine command (each start costs about 0.2 s), run by `engine_process`
so that dstack's death never kills it. Every command names its stack with `--stack`, so none
selects it first. `up` and `destroy` serve the inline program to the engine the way the
Automation API does (a language runtime the engine calls back, `--client`) and read outputs
and changes from the update's own event log, so no `stack output` or `stack history` call
follows them. That is why the SDK's `auto.Stack` is not used: its constructor runs `stack
select`, and its `up` and `destroy` read outputs and history back afterwards (`stack output`
twice, `stack history`): five more engine starts per run, telling dstack nothing new.

The SDK has no public host for an inline program: `LanguageServer` comes from its private
`pulumi.automation._server`, and `tests/unit/test_engine_sdk.py` fails when the SDK changes.

Importing pulumi takes 0.1 s, so this module imports it only where it is used: the program's
runtime is made when the engine first calls it (`_LazyRuntime`, while the engine starts),
and Pulumi's errors are imported when a command fails. A backend's program imports its
resources inside itself for the same reason.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

import grpc

from dstack.config.backends import ResourceChange, StackInfo, UpdateRecord
from dstack.errors import BackendError, EngineMissingError, NotFoundError, StackBusyError
from dstack.home import default_home, private_dir, secret_file, write_private
from dstack.stacks.engine_install import PULUMI_VERSION, engine_bin, find_engine, write_launcher
from dstack.stacks.engine_process import OutputFn, run_detached, scratch_path, sweep
from dstack.stacks.file_state import (
    PROJECT_NAME,
    qualified_stack_name,
    state_folder,
    state_url,
    unreadable_stacks,
)
from dstack.stacks.stack_files import create_stack, quick_state, remember_salt

PROJECT_YAML = (
    "name: dstack\n"
    "runtime: python\n"
    "description: Ephemeral run stacks and long-lived workspace stacks of dstack.\n"
)
"""The project every stack belongs to; the repository's Pulumi.yaml holds the same text."""

Program = Callable[[], None]
Outputs = dict[str, object]
"""A stack's outputs: JSON values, whose shape each program defines."""

INLINE_EXEC_KIND = "auto.inline"
"""What the Automation API tells the engine an in-process program is (`--exec-kind`)."""
HISTORY_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
"""How `pulumi stack history --json` writes times (as the SDK parses them)."""
_GRPC_OPTIONS = [("grpc.max_receive_message_length", 400 * 1024 * 1024)]
"""The SDK's own limit for the engine's messages to an inline program."""

_CHANGE_OPS = {"create": "create", "delete": "delete", "update": "update",
               "replace": "replace", "create-replacement": "create",
               "delete-replaced": "delete"}
"""A step's `op` in the engine's event log (the SDK's `OpType`) → the change dstack records."""


def install_official(root: str, version: str) -> None:
    """Run Pulumi's official installer into `root` (used by `engine_install`)."""
    from pulumi import automation as auto
    from semver import VersionInfo

    auto.PulumiCommand.install(root=root, version=VersionInfo.parse(version))


class Engine:
    """Stacks of the `dstack` project in one state backend, run by the engine in the home."""

    def __init__(self, home: Path, backend_url: str | None = None,
                 passphrase_file: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.backend_url = state_url(home, backend_url)
        self.file_state = state_folder(home, backend_url)
        self.work_dir = home / "pulumi" / "project"
        self.pulumi_home = home / "pulumi" / "home"
        self.passphrase_file = passphrase_file or home / "secrets" / "pulumi-passphrase"
        self.extra_env = extra_env or {}
        self.output_dir = home / "pulumi" / "output"
        self.salts_file = home / "pulumi" / "stack-salts.json"
        self._prepared = False

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
            "PATH": f"{self.binary.parent}{os.pathsep}{path}",
            **self.extra_env,
        }

    @property
    def binary(self) -> Path:
        """The engine's `pulumi` executable: the home's, else the default home's."""
        return (find_engine(self.home) or engine_bin(self.home)) / "pulumi"

    def _prepare(self) -> None:
        """Check the engine is installed; create the project, state and output folders and
        the passphrase once per process."""
        if self._prepared:
            return
        found = find_engine(self.home)
        if found is None:
            raise EngineMissingError(
                f"the Pulumi engine {PULUMI_VERSION} is not installed in {engine_bin(self.home)}"
                f" nor in {engine_bin(default_home())}",
                "Run `make engine` (or `python -m dstack.stacks.engine_install`) to install it.",
            )
        with suppress(OSError):  # a home upgraded without `make` (pip alone) gets it too
            write_launcher(found)
        if self.file_state:
            private_dir(self.file_state)
        private_dir(self.pulumi_home)
        private_dir(self.work_dir)
        secret_file(self.passphrase_file)
        project = self.work_dir / "Pulumi.yaml"
        if not project.exists() or project.read_text() != PROJECT_YAML:
            write_private(project, PROJECT_YAML.encode())
        private_dir(self.output_dir)
        sweep(self.output_dir)
        self._prepared = True

    def _run(self, args: list[str], stack: str | None = None,
             on_output: OutputFn | None = None) -> str:
        """Run `pulumi <args> [--stack <stack>]`; its stdout. A failure raises the Automation
        API's error for it (stack not found, already exists, locked, ...)."""
        self._prepare()
        argv = [str(self.binary), "--non-interactive", *args,
                *(["--stack", stack] if stack else [])]
        env = {**os.environ, **self.env(), "PULUMI_AUTOMATION_API": "true",
               "PULUMI_DEBUG_COMMANDS": "true"}
        done = run_detached(argv, cwd=self.work_dir, env=env, output_dir=self.output_dir,
                            on_output=on_output)
        if done.code != 0:
            from pulumi import automation as auto
            from pulumi.automation import errors as auto_errors

            raise auto_errors.create_command_error(
                auto.CommandResult(stdout=done.stdout, stderr=done.stderr, code=done.code))
        return done.stdout

    def _update(self, command: str, name: str, program: Program,
                on_output: OutputFn | None) -> tuple[Outputs, list[ResourceChange]]:
        """`pulumi up|destroy` of stack `name` with `program`: its outputs and changes."""
        events = scratch_path(self.output_dir, ".events")
        try:
            with _serve_program(program) as client:
                self._run([command, "--yes", "--skip-preview", "--color", "never",
                           "--suppress-progress", f"--client={client}",
                           "--exec-kind", INLINE_EXEC_KIND, "--event-log", str(events)],
                          stack=name, on_output=on_output)
            return _read_events(events)
        finally:
            events.unlink(missing_ok=True)

    # -- operations ----------------------------------------------------------------------

    def up(
        self, name: str, program: Program, on_output: OutputFn | None = None
    ) -> tuple[Outputs, list[ResourceChange]]:
        """Create (or select) stack `name` and bring it up; return its outputs and changes."""
        with _translated(name, "bring up"):
            self._create(name)
            return self._update("up", name, program, on_output)

    def _create(self, name: str) -> None:
        """Create stack `name` unless it exists: in a local file state by writing its files
        once the engine has created a stack with this passphrase (`stack_files`), else with
        `pulumi stack init` (one call, not select + init)."""
        self._prepare()
        state = self.file_state
        if state is not None and quick_state(self.backend_url, state):
            try:
                made = create_stack(self.salts_file, self.passphrase_file, self.work_dir,
                                    state, name)
            except OSError:
                made = None  # the engine then tries, and says what is wrong
            if made is not None:
                return
        from pulumi.automation import errors as auto_errors

        with suppress(auto_errors.StackAlreadyExistsError):
            self._run(["stack", "init", name, "--secrets-provider", "passphrase"])
            if state is not None and quick_state(self.backend_url, state):  # laid out now
                remember_salt(self.salts_file, self.passphrase_file, self.work_dir, name)

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
            return self._update("destroy", name, program, on_output)[1]

    def remove(self, name: str) -> None:
        """Remove stack `name` and its history (only when it holds no resources)."""
        with _translated(name, "remove"):
            self._run(["stack", "rm", "--yes", name])

    def list_stacks(self) -> list[StackInfo]:
        """Every stack of the project in the backend."""
        try:
            with _translated("*", "list"):
                listed = json.loads(self._run(["stack", "ls", "--json"]))
        except BackendError as exc:
            broken = unreadable_stacks(self.file_state, PROJECT_NAME) if self.file_state else []
            if broken:
                exc.hint = (f"These state files do not load: {', '.join(map(str, broken))}. "
                            "Each has its previous checkpoint beside it (.bak); restore that "
                            "or move the file away, then run `dstack gc` again.")
            raise
        return [StackInfo(name=str(s["name"]).rsplit("/", 1)[-1],
                          resource_count=int(s.get("resourceCount") or 0))
                for s in listed]

    def history(self, name: str) -> list[UpdateRecord]:
        """Every update of stack `name`, oldest first, numbered from 1.

        The whole history is asked for (`--page-size 0`: without it the engine lists the 10
        newest). The DIY backends record every update with version 0, so an update's version
        is its place in the history, as Pulumi Cloud numbers them.
        """
        with _translated(name, "read the history of"):
            listed = json.loads(self._run(
                ["stack", "history", "--json", "--page-size", "0", "--page", "1"], stack=name))
        listed.reverse()  # the engine lists the newest first
        return [
            UpdateRecord(
                version=int(s.get("version") or number),
                kind=str(s["kind"]),
                result=str(s["result"]),
                start=_history_time(s["startTime"]),
                end=_history_time(s["endTime"]) if "endTime" in s else None,
                changes={str(op): int(n) for op, n in (s.get("resourceChanges") or {}).items()},
            )
            for number, s in enumerate(listed, 1)
        ]

    def history_command(self, name: str) -> str:
        """A shell command that lists stack `name`'s history with this engine and state from
        any folder: the stack's fully qualified name, the state backend and the passphrase's
        file (never the passphrase) in its environment."""
        env = {"PULUMI_BACKEND_URL": self.backend_url,
               "PULUMI_CONFIG_PASSPHRASE_FILE": str(self.passphrase_file)}
        argv = [str(self.binary), "stack", "history",
                "--stack", qualified_stack_name(name), "--page-size", "0"]
        return " ".join([*(f"{key}={shlex.quote(value)}" for key, value in env.items()),
                         shlex.join(argv)])


@contextmanager
def _serve_program(program: Program) -> Iterator[str]:
    """Serve `program` as the language runtime the engine runs it through, as the Automation
    API does for an inline program; the address to give the engine (`--client`)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=_GRPC_OPTIONS)
    server.add_generic_rpc_handlers((_LazyRuntime(program),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(0)


class _LazyRuntime:
    """A gRPC handler (`grpc.GenericRpcHandler` by its shape): the SDK's language runtime for
    `program` (`LanguageServer`), made when the engine first calls it (in `destroy` too).
    Importing pulumi for it takes 0.1 s, which the engine, started meanwhile, spends on its
    own start and on deriving the state's key."""

    def __init__(self, program: Program) -> None:
        self._program = program
        self._lock = threading.Lock()
        self._handlers: tuple[grpc.GenericRpcHandler, ...] | None = None

    def service(self, handler_call_details: grpc.HandlerCallDetails
                ) -> grpc.RpcMethodHandler | None:
        with self._lock:
            if self._handlers is None:
                self._handlers = _sdk_runtime(self._program)
        for handler in self._handlers:
            if (found := handler.service(handler_call_details)) is not None:
                return found
        return None


class _Handlers:
    """Takes the handlers the SDK's generated code adds to a gRPC server."""

    handlers: tuple[grpc.GenericRpcHandler, ...] = ()

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self.handlers = tuple(handlers)


def _sdk_runtime(program: Program) -> tuple[grpc.GenericRpcHandler, ...]:
    """The gRPC handlers of the SDK's `LanguageServer` serving `program`."""
    from pulumi.automation._server import LanguageServer  # no public equivalent; see above
    from pulumi.runtime.proto import language_pb2_grpc

    server = _Handlers()
    language_pb2_grpc.add_LanguageRuntimeServicer_to_server(LanguageServer(program), server)
    return server.handlers


def _read_events(path: Path) -> tuple[Outputs, list[ResourceChange]]:
    """The stack's outputs and each resource the engine changed, from an update's event log
    (one JSON engine event a line; each step's end is a `resOutputsEvent`)."""
    outputs: Outputs = {}
    changes: list[ResourceChange] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        event = json.loads(line).get("resOutputsEvent")
        meta = event.get("metadata") if isinstance(event, dict) else None
        if not isinstance(meta, dict):
            continue
        kind, new = str(meta.get("type", "")), meta.get("new")
        if kind == "pulumi:pulumi:Stack" and isinstance(new, dict):
            outputs = dict(new.get("outputs") or {})
        op = _CHANGE_OPS.get(str(meta.get("op")))
        if op is None or kind.startswith(("pulumi:pulumi:", "pulumi:providers:")):
            continue
        changes.append(ResourceChange(op=op, type=kind,
                                      name=str(meta.get("urn", "")).rsplit("::", 1)[-1]))
    return outputs, changes


def _history_time(text: str) -> str:
    return datetime.strptime(text, HISTORY_TIME).isoformat()


@contextmanager
def _translated(stack: str, action: str) -> Iterator[None]:
    """Turn Pulumi's exceptions into dstack errors that say what to do next."""
    try:
        yield
    except Exception as exc:
        from pulumi.automation import errors as auto_errors

        if isinstance(exc, auto_errors.ConcurrentUpdateError):
            raise StackBusyError(
                f"stack {stack} is locked by another dstack or pulumi process",
                "Wait for it to finish; if that process is gone, `dstack gc` clears the stale "
                "lock.",
            ) from exc
        if isinstance(exc, auto_errors.StackNotFoundError):
            raise NotFoundError(f"no stack named {stack} in the state backend",
                                "`dstack ps -a` lists the runs there are.") from exc
        if isinstance(exc, auto_errors.CommandError):
            detail = _last_error_lines(getattr(exc, "stderr", "") or str(exc))
            raise BackendError(
                f"pulumi could not {action} stack {stack}: {detail}",
                "Run the command again with --debug for the engine's full output.",
            ) from exc
        raise


def _last_error_lines(text: str, limit: int = 6) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    picked = [ln for ln in lines if "error" in ln.lower()] or lines
    return " | ".join(picked[-limit:])[:1500] or "(no message)"

"""The private piece of the Pulumi SDK that `dstack.stacks.engine` uses, pinned.

The engine module serves an inline program to the engine with the SDK's own
`pulumi.automation._server.LanguageServer`, as the SDK's `Stack.up` and `Stack.destroy` do:
the SDK has no public way to run an inline program without the `stack select`, `stack
output` and `stack history` calls dstack saves. These tests fail when the SDK changes; then
read the new SDK's `Stack.up` and `Stack.destroy` and follow them in the engine module
(`_serve_program`, `Engine._update`, its constants) before moving `CHECKED_SDK`.
"""

from __future__ import annotations

import importlib.metadata
import inspect

from pulumi import automation as auto
from pulumi.automation import _server, _stack
from pulumi.runtime import _grpc_settings
from pulumi.runtime.proto import LanguageRuntimeServicer

from dstack.stacks import engine

CHECKED_SDK = "3.260.0"
"""The SDK release the engine module's use of it was checked against."""


def test_the_sdk_is_the_release_the_engine_module_was_checked_against() -> None:
    assert importlib.metadata.version("pulumi") == CHECKED_SDK, (
        "the Pulumi SDK changed: check dstack.stacks.engine against it (see this module)")


def test_the_language_server_serves_a_program_as_the_language_runtime() -> None:
    assert list(inspect.signature(_server.LanguageServer).parameters) == ["program"]
    assert issubclass(_server.LanguageServer, LanguageRuntimeServicer)
    assert {"Run", "GetRequiredPlugins", "About"} <= set(vars(_server.LanguageServer))


def test_the_sdk_runs_an_inline_program_as_the_engine_module_does() -> None:
    for operation in (auto.Stack.up, auto.Stack.destroy):
        source = inspect.getsource(operation)
        for piece in ("LanguageServer(program)", "add_LanguageRuntimeServicer_to_server",
                      'add_insecure_port(address="127.0.0.1:0")',
                      'f"--client=127.0.0.1:{port}"', '"--exec-kind", kind',
                      '"--event-log", log_file', "server.stop(0)"):
            assert piece in source, f"{operation.__qualname__} no longer has {piece}"
    assert _stack.ExecKind.INLINE.value == engine.INLINE_EXEC_KIND
    assert '["--stack", self.name]' in inspect.getsource(_stack.Stack._run_pulumi_cmd_sync)


def test_the_engine_module_parses_and_limits_as_the_sdk_does() -> None:
    assert engine.HISTORY_TIME == _stack._DATETIME_FORMAT
    assert set(engine._GRPC_OPTIONS) <= set(_grpc_settings._GRPC_CHANNEL_OPTIONS)

"""The lean host of the local backend's dynamic resources: what the engine starts to create
and delete a run's folder and runner process (`python -m dstack.stacks.provider_host`).

The engine starts the `pulumi-python` provider for every `up` and `destroy` that touches a
dynamic resource, through the launcher beside it (`engine_install.LAUNCHER`). The SDK's own
host (`python -m pulumi.dynamic`) imports the whole SDK and dill (0.12 s of a 0.15 s start)
and takes 0.05 s to exit; this one imports grpc and the protocol's generated modules only,
starts in about half the time and exits at once when the engine is done with it.

It serves the types of `local_resources` by the name their type token ends with (`Folder`,
`RunnerProcess`), doing what `local_ops` says, and ignores the pickled provider the SDK adds
(`__provider`), which it hands back untouched. The protocol's modules are loaded from the SDK's
folder under a private package name (`_pulumi_protocol`), so `pulumi/__init__` never runs;
`tests/unit/test_provider_host.py` fails when the SDK moves them.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import signal
import sys
import threading
import traceback
import types
from collections.abc import Callable
from concurrent import futures
from typing import Any, TypeVar

import grpc
from google.protobuf import empty_pb2, json_format, struct_pb2

from dstack.stacks.local_ops import OPERATIONS, Operations

PROVIDER_KEY = "__provider"
"""The input where the SDK puts the pickled provider; handed back unchanged."""
VERSION = "0.1.0"
"""The version the SDK's host reports: the engine records it on the provider resource."""
PROTOCOL_PACKAGE = "_pulumi_protocol"
STOP_GRACE_S = 120.0
"""How long a stop request waits for a create or delete in flight (a runner's stop takes up
to `local_ops.RUNNER_STOP_WAIT_S`)."""

# The generated protocol modules have no type information: requests are read by field name.
Message = Any  # type: ignore[explicit-any]  # generated protobuf messages, untyped
Props = dict[str, object]
T = TypeVar("T")


def protocol() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """The SDK's generated `plugin_pb2`, `provider_pb2` and `provider_pb2_grpc` modules,
    without importing `pulumi` (its already imported ones if it is)."""
    if "pulumi.runtime.proto" in sys.modules:
        base = "pulumi.runtime.proto"
    else:
        base = PROTOCOL_PACKAGE
        if base not in sys.modules:
            spec = importlib.util.find_spec("pulumi")
            if spec is None or not spec.submodule_search_locations:
                raise ImportError("the pulumi SDK is not installed")
            package = types.ModuleType(base)
            package.__path__ = [os.path.join(spec.submodule_search_locations[0],
                                             "runtime", "proto")]
            sys.modules[base] = package
    return (importlib.import_module(f"{base}.plugin_pb2"),
            importlib.import_module(f"{base}.provider_pb2"),
            importlib.import_module(f"{base}.provider_pb2_grpc"))


def props_of(struct: struct_pb2.Struct) -> Props:
    """A property bag as plain values (whole numbers as ints)."""
    return {key: _plain(value) for key, value in json_format.MessageToDict(struct).items()}


def _plain(value: object) -> object:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def struct_of(props: Props) -> struct_pb2.Struct:
    """A property bag for the engine; None values are left out, as the SDK does."""
    struct = struct_pb2.Struct()
    struct.update({key: value for key, value in props.items() if value is not None})
    return struct


def type_name(urn: str) -> str:
    """`Folder` of `urn:pulumi:<stack>::<project>::pulumi-python:dynamic/dstack:Folder::<name>`
    (a child's type part is `<parent type>$<type>`)."""
    return urn.split("::")[2].rsplit("$", 1)[-1].rsplit(":", 1)[-1]


def make_servicer(plugin_pb2: types.ModuleType, provider_pb2: types.ModuleType,
                  base: type) -> object:
    """The ResourceProvider service over `OPERATIONS`, built on the generated `base`."""

    class Servicer(base):  # type: ignore[misc]  # generated, untyped base class
        def _ops(self, urn: str) -> Operations:
            ops = OPERATIONS.get(type_name(urn))
            if ops is None:
                raise LookupError(f"dstack's provider host has no resource type for {urn}")
            return ops

        def _guarded(self, context: grpc.ServicerContext, fn: Callable[[], T]) -> T:
            try:
                return fn()
            except Exception:  # every failure goes back to the engine with its traceback
                context.abort(grpc.StatusCode.UNKNOWN, traceback.format_exc())
                raise  # not reached: abort raises

        def GetPluginInfo(self, request: Message, context: grpc.ServicerContext) -> Message:
            return plugin_pb2.PluginInfo(version=VERSION)

        def Configure(self, request: Message, context: grpc.ServicerContext) -> Message:
            return provider_pb2.ConfigureResponse(acceptSecrets=False)

        def Cancel(self, request: Message, context: grpc.ServicerContext) -> Message:
            return empty_pb2.Empty()

        def Check(self, request: Message, context: grpc.ServicerContext) -> Message:
            return provider_pb2.CheckResponse(inputs=request.news)

        def Diff(self, request: Message, context: grpc.ServicerContext) -> Message:
            def diff() -> Message:
                replaces = self._ops(request.urn).replaces(props_of(request.olds),
                                                           props_of(request.news))
                changes = (provider_pb2.DiffResponse.DIFF_SOME if replaces
                           else provider_pb2.DiffResponse.DIFF_NONE)
                return provider_pb2.DiffResponse(changes=changes, replaces=replaces,
                                                 deleteBeforeReplace=True)
            return self._guarded(context, diff)

        def Create(self, request: Message, context: grpc.ServicerContext) -> Message:
            def create() -> Message:
                props = props_of(request.properties)
                id_, outs = self._ops(request.urn).create(props)
                if PROVIDER_KEY in props:
                    outs[PROVIDER_KEY] = props[PROVIDER_KEY]
                return provider_pb2.CreateResponse(id=id_, properties=struct_of(outs))
            return self._guarded(context, create)

        def Read(self, request: Message, context: grpc.ServicerContext) -> Message:
            return provider_pb2.ReadResponse(id=request.id, properties=request.properties)

        def Delete(self, request: Message, context: grpc.ServicerContext) -> Message:
            def delete() -> Message:
                self._ops(request.urn).delete(props_of(request.properties))
                return empty_pb2.Empty()
            return self._guarded(context, delete)

    return Servicer()


def main() -> None:
    """Serve on a loopback port, print it for the engine, and exit when told to stop."""
    plugin_pb2, provider_pb2, provider_pb2_grpc = protocol()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    provider_pb2_grpc.add_ResourceProviderServicer_to_server(
        make_servicer(plugin_pb2, provider_pb2, provider_pb2_grpc.ResourceProviderServicer),
        server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    stop.wait()
    server.stop(grace=STOP_GRACE_S).wait()  # a create or delete in flight ends first
    sys.stdout.flush()
    os._exit(0)  # nothing to clean up: skip the interpreter's and grpc's slow shutdown


if __name__ == "__main__":
    main()

"""A Pulumi resource-provider plugin over gRPC, for the stand-in clouds of the tests.

The engine starts `pulumi-resource-<name>` from PATH (an "ambient" plugin), reads the port
it prints on stdout, and speaks Pulumi's ResourceProvider protocol to it. `serve` runs such
a server whose resource types and invokes are plain Python objects (`Resource`, functions),
so each stand-in cloud (`aws`, `gcp`) only says what each type does against its emulator.

What the protocol asks, and how this server answers it:

- Check: the resource's inputs with its defaults applied (auto-names are kept from the old
  inputs, so an update never renames); Diff: the input keys that changed, those that
  `Resource.replaces` picks (default: those in `Resource.replace_on`) as replaces;
  Create / Read / Update / Delete: the handler's calls.
  Delete of something already gone succeeds; Read of something gone returns no id, which
  the engine takes as "deleted outside Pulumi".
- During a preview, Create and Update return unknown outputs and touch nothing.
- The provider resource itself (`pulumi:providers:<name>`): its inputs are the config the
  handlers get (region, profile, project, ...).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import traceback
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import empty_pb2, struct_pb2
from pulumi.runtime import proto, rpc
from pulumi.runtime.proto import provider_pb2_grpc

UNKNOWN = rpc.UNKNOWN
Props = dict[str, Any]


class Gone(Exception):
    """The cloud object a Read, Update or Delete names no longer exists."""


@dataclass
class Config:
    """The provider's configuration (its resource's inputs) and where the stand-in keeps
    what no emulator holds."""

    values: Props = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        """A config value; the engine passes them as strings (JSON for objects)."""
        value = self.values.get(key, default)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value


class Resource:
    """What one resource type does. Subclasses override what their type needs."""

    replace_on: frozenset[str] = frozenset()
    """Input keys whose change replaces the resource (a create, then a delete)."""
    delete_before_replace: bool = False

    def replaces(self, olds: Props, news: Props, changed: list[str]) -> list[str]:
        """Which of the changed input keys replace the resource (default: `replace_on`)."""
        return [k for k in changed if k in self.replace_on]

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        """The inputs with defaults applied (e.g. an auto-name)."""
        return news

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        """Create it; (id, outputs)."""
        raise NotImplementedError

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        """Its outputs now; raise Gone when it no longer exists."""
        return outputs

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        """Apply new inputs in place; the new outputs."""
        return {**olds, **news}

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        """Delete it; raise Gone (or return) when it is already gone."""


def auto_name(name: str, seed: bytes, olds: Props, key: str, sep: str = "-",
              length: int = 7, limit: int = 63) -> str:
    """Pulumi's auto-name: `<name>-<random hex>`, kept from the old inputs when present."""
    if olds.get(key):
        return str(olds[key])
    import hashlib

    suffix = hashlib.sha256(seed or os.urandom(16)).hexdigest()[:length]
    return f"{name[:limit - length - len(sep)]}{sep}{suffix}"


def _props(struct: struct_pb2.Struct | None, keep_unknowns: bool = True) -> Props:
    return dict(rpc.deserialize_properties(struct, keep_unknowns)) if struct else {}


def _struct(props: Mapping[str, Any]) -> struct_pb2.Struct:
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(rpc.serialize_properties(dict(props), {}))
    finally:
        loop.close()


def _type_of(urn: str) -> str:
    """`aws:s3/bucket:Bucket` of `urn:pulumi:stack::project::aws:s3/bucket:Bucket::name`."""
    return urn.split("::")[2].rsplit("$", 1)[-1]


def _name_of(urn: str) -> str:
    return urn.split("::")[3]


def _unknowns(props: Props) -> Props:
    return {k: (UNKNOWN if v is None else v) for k, v in props.items()}


def _log(msg: str) -> None:
    print(f"[stand-in] {msg}", file=sys.stderr, flush=True)


class Servicer(provider_pb2_grpc.ResourceProviderServicer):  # type: ignore[misc]
    """The gRPC service: dispatches by type token to `types` and `invokes`."""

    def __init__(self, name: str, version: str, types: Mapping[str, Resource],
                 invokes: Mapping[str, Callable[[Config, Props], Props]],
                 outputs: Mapping[str, tuple[str, ...]] | None = None) -> None:
        self.name, self.version = name, version
        self.types, self.invokes = types, invokes
        self.outputs = outputs or {}
        self.cfg = Config()

    # -- errors ---------------------------------------------------------------------------

    def _guard(self, what: str, context: grpc.ServicerContext,
               fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # every failure goes back to the engine with its cause
            _log(f"{what} failed: {traceback.format_exc()}")
            context.abort(grpc.StatusCode.UNKNOWN, f"{what}: {exc}")

    def _handler(self, urn: str) -> Resource:
        typ = _type_of(urn)
        handler = self.types.get(typ)
        if handler is None:
            raise NotImplementedError(f"the stand-in {self.name} plugin has no resource {typ}")
        return handler

    # -- plugin and provider configuration -------------------------------------------------

    def GetPluginInfo(self, request: Any, context: Any) -> Any:
        return proto.PluginInfo(version=self.version)

    def GetSchema(self, request: Any, context: Any) -> Any:
        return proto.GetSchemaResponse(schema=json.dumps({"name": self.name,
                                                          "version": self.version}))

    def CheckConfig(self, request: Any, context: Any) -> Any:
        return proto.CheckResponse(inputs=request.news)

    def DiffConfig(self, request: Any, context: Any) -> Any:
        olds, news = _props(request.olds), _props(request.news)
        changed = sorted(k for k in set(olds) | set(news)
                         if k != "version" and olds.get(k) != news.get(k))
        return proto.DiffResponse(
            changes=proto.DiffResponse.DIFF_SOME if changed else proto.DiffResponse.DIFF_NONE,
            diffs=changed)

    def Configure(self, request: Any, context: Any) -> Any:
        values = _props(request.args, keep_unknowns=False) if request.HasField("args") \
            else dict(request.variables)
        self.cfg = Config({k.rsplit(":", 1)[-1]: rpc.unwrap_rpc_secret(v)
                           for k, v in values.items()})
        return proto.ConfigureResponse(acceptSecrets=False, supportsPreview=True,
                                       acceptResources=False)

    def Invoke(self, request: Any, context: Any) -> Any:
        fn = self.invokes.get(request.tok)
        if fn is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED,
                          f"the stand-in {self.name} plugin has no function {request.tok}")
        result = self._guard(request.tok, context, lambda: fn(self.cfg, _props(request.args)))
        return proto.InvokeResponse(**{"return": _struct(result)})

    # -- resources -------------------------------------------------------------------------

    def Check(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            handler = self._handler(request.urn)
            inputs = handler.check(_name_of(request.urn), _props(request.olds),
                                   _props(request.news), bytes(request.randomSeed))
            return proto.CheckResponse(inputs=_struct(inputs))
        return self._guard(f"check {request.urn}", context, run)

    def Diff(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            handler = self._handler(request.urn)
            olds = _props(request.old_inputs) if request.HasField("old_inputs") \
                else _props(request.olds)
            news = _props(request.news)
            ignored = set(request.ignoreChanges)
            changed = sorted(k for k in set(olds) | set(news)
                             if k not in ignored and k != "__defaults"
                             and olds.get(k) != news.get(k))
            replaces = handler.replaces(olds, news, changed)
            return proto.DiffResponse(
                changes=proto.DiffResponse.DIFF_SOME if changed else proto.DiffResponse.DIFF_NONE,
                diffs=changed, replaces=replaces,
                deleteBeforeReplace=handler.delete_before_replace)
        return self._guard(f"diff {request.urn}", context, run)

    def Create(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            handler = self._handler(request.urn)
            inputs = _props(request.properties)
            if request.preview:
                keys = self.outputs.get(_type_of(request.urn), ())
                return proto.CreateResponse(
                    id="", properties=_struct({**dict.fromkeys(keys, UNKNOWN), **inputs}))
            id_, outputs = handler.create(self.cfg, _name_of(request.urn), inputs)
            return proto.CreateResponse(id=id_, properties=_struct({**inputs, **outputs}))
        return self._guard(f"create {request.urn}", context, run)

    def Read(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            handler = self._handler(request.urn)
            try:
                outputs = handler.read(self.cfg, request.id, _props(request.properties))
            except Gone:
                return proto.ReadResponse(id="")
            return proto.ReadResponse(id=request.id, properties=_struct(outputs),
                                      inputs=request.inputs)
        return self._guard(f"read {request.urn}", context, run)

    def Update(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            handler = self._handler(request.urn)
            olds, news = _props(request.olds), _props(request.news)
            if request.preview:
                return proto.UpdateResponse(properties=_struct({**olds, **news}))
            outputs = handler.update(self.cfg, request.id, olds, news)
            return proto.UpdateResponse(properties=_struct(outputs))
        return self._guard(f"update {request.urn}", context, run)

    def Delete(self, request: Any, context: Any) -> Any:
        def run() -> Any:
            handler = self._handler(request.urn)
            try:
                handler.delete(self.cfg, request.id, _props(request.properties))
            except Gone:
                _log(f"{request.urn} ({request.id}) was already gone")
            return empty_pb2.Empty()
        return self._guard(f"delete {request.urn}", context, run)

    def Cancel(self, request: Any, context: Any) -> Any:
        return empty_pb2.Empty()


def serve(servicer: Servicer) -> None:
    """Start the server on a loopback port, print the port for the engine, wait."""
    from pulumi.runtime._grpc_settings import _GRPC_CHANNEL_OPTIONS

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                         options=_GRPC_CHANNEL_OPTIONS)
    provider_pb2_grpc.add_ResourceProviderServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    sys.stdout.write(f"{port}\n")
    sys.stdout.flush()
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop(0)

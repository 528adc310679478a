"""Python dynamic resources of the local backend: a folder, and the runner process.

The program side declares them here. The engine serves them through the launcher beside it
(`engine_install.LAUNCHER`): dstack's lean host (`provider_host`), which starts without the
SDK. An engine whose launcher is Pulumi's own runs `python -m pulumi.dynamic`, which unpickles
the providers below: both call the same `local_ops`. They hold no secrets in their state.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider

from dstack.stacks.local_ops import FolderOps, Operations, RunnerProcessOps

# A dynamic provider's methods take the resource's properties as pulumi.dynamic declares them
# (and must, to override it): the engine's untyped property bag, read by key.
Props = dict[str, Any]  # type: ignore[explicit-any]  # pulumi.dynamic's property bag, untyped


class _Provider(ResourceProvider):
    """A dynamic provider that does what `local_ops` says for its type."""

    ops: Operations = Operations()

    def create(self, props: Props) -> CreateResult:
        id_, outs = self.ops.create(props)
        return CreateResult(id_=id_, outs=outs)

    def diff(self, _id: str, olds: Props, news: Props) -> DiffResult:
        replaces = self.ops.replaces(olds, news)
        return DiffResult(changes=bool(replaces), replaces=replaces,
                          delete_before_replace=True)

    def delete(self, _id: str, props: Props) -> None:
        self.ops.delete(props)


class FolderProvider(_Provider):
    """A folder that exists while the resource does (`local_ops.FolderOps`)."""

    ops = FolderOps()


class RunnerProcessProvider(_Provider):
    """The runner process of a run (`local_ops.RunnerProcessOps`)."""

    ops = RunnerProcessOps()


class Folder(Resource, module="dstack", name="Folder"):
    """A folder on this machine."""

    path: pulumi.Output[str]

    def __init__(self, name: str, path: str, keep: bool = False,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(FolderProvider(), name, {"path": path, "keep": keep}, opts)


class RunnerProcess(Resource, module="dstack", name="RunnerProcess"):
    """The runner of one run, started from its bootstrap script in its workspace."""

    pid: pulumi.Output[int]
    start_ticks: pulumi.Output[int]

    def __init__(self, name: str, workdir: pulumi.Input[str], bootstrap: str, run: str = "",
                 store_url: str = "", opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(RunnerProcessProvider(), name,
                         {"workdir": workdir, "bootstrap": bootstrap, "run": run,
                          "store_url": store_url, "pid": None, "start_ticks": None}, opts)

"""Pulumi's mocks for the aws and gcp programs, whose provider plugins cannot run without a
cloud: a recorder of what a program declares, and an engine that runs programs under it.

Each cloud's tests subclass `Recorder` with the state its cloud adds to a resource
(`state`) and its answers to lookups (`answer`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pulumi

from dstack.config.backends import ResourceChange
from dstack.errors import NotFoundError


class Recorder(pulumi.runtime.Mocks):
    """Records every resource and lookup of a program; answers as `state` and `answer` say."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []
        self.calls: list[pulumi.runtime.MockCallArgs] = []

    def state(self, args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
        """What the cloud adds to (or changes in) a new resource's inputs."""
        return {}

    def answer(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        """The cloud's result of a lookup."""
        return {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", {**args.inputs, **self.state(args)}

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.calls.append(args)
        return self.answer(args)

    def of_type(self, typ: str) -> list[dict[str, Any]]:
        """The inputs of every resource of type `typ`, in declaration order."""
        return [r.inputs for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> dict[str, Any]:
        """The inputs of the one resource of type `typ`."""
        (found,) = self.of_type(typ)
        return found

    def call_args(self, token: str) -> dict[str, Any]:
        """The arguments of the one lookup `token`."""
        (found,) = [c.args for c in self.calls if c.token == token]
        return found


R = TypeVar("R", bound=Recorder)


def run_under_mocks(program: Callable[[], None], recorder: R) -> R:
    """Run a program to completion under `recorder`; return it, holding what it declared."""
    pulumi.runtime.set_mocks(recorder, project="dstack", stack="test", preview=False)
    pulumi.runtime.test(program)()
    return recorder


class FakeEngine(Generic[R]):
    """Runs each program under the mocks instead of the engine; remembers what it did.

    `up` answers a `workspace-*` stack with `workspace` outputs, any other with `run`
    outputs and the one change `created`.
    """

    def __init__(self, recorder: Callable[[], R], *, workspace: dict[str, Any],
                 run: dict[str, Any], created: ResourceChange) -> None:
        self.recorder = recorder
        self.workspace = workspace
        self.run = run
        self.created = created
        self.ups: list[str] = []
        self.recorders: dict[str, R] = {}

    def up(self, name: str, program: Callable[[], None]
           ) -> tuple[dict[str, Any], list[ResourceChange]]:
        self.ups.append(name)
        self.recorders[name] = run_under_mocks(program, self.recorder())
        if name.startswith("workspace-"):
            return dict(self.workspace), []
        return dict(self.run), [self.created]

    def destroy(self, name: str, program: Callable[[], None],
                missing_ok: bool = False) -> list[ResourceChange]:
        if missing_ok:  # as the real engine: a stack never created is already destroyed
            return []
        raise NotFoundError(f"no stack named {name}")

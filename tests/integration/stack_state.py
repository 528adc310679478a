"""What a stack holds, read the way a Pulumi user would, for tests that check the state itself.

dstack never refreshes a stack nor exports its state; these tests do, through the Automation
API's public `Stack` in the engine's own project folder and environment (its extra engine
calls cost nothing that matters here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pulumi import automation as auto

from dstack.stacks.engine import Engine


def public_stack(engine: Engine, name: str,
                 program: Callable[[], None] | None = None) -> auto.Stack:
    """Stack `name` of `engine`'s state backend, selected with the SDK's public API."""
    workspace = auto.LocalWorkspace(
        work_dir=str(engine.work_dir), pulumi_home=str(engine.pulumi_home), program=program,
        env_vars=engine.env(), secrets_provider="passphrase",
        pulumi_command=auto.PulumiCommand(root=str(engine.binary.parent.parent)))
    return auto.Stack.select(name, workspace)


def refresh(engine: Engine, name: str, program: Callable[[], None] | None = None,
            expect_no_changes: bool = False) -> None:
    """`pulumi refresh` of stack `name`: the provider's Read of each resource."""
    public_stack(engine, name, program).refresh(
        color="never", suppress_progress=True, expect_no_changes=expect_no_changes)


def resources(engine: Engine, name: str) -> list[dict[str, Any]]:
    """The resources stack `name` holds now, from its exported state."""
    deployment = public_stack(engine, name).export_stack().deployment or {}
    return list(deployment.get("resources") or [])

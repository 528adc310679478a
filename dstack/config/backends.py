"""What the core asks of a backend, and the registry that lazily loads one by name.

A backend provisions a run's infrastructure as a Pulumi stack and tears it down. Its
implementation lives in `dstack.stacks.<name>`; the core names it by string only, so it
never imports pulumi.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

from dstack.errors import UsageError
from dstack.lazy import load_target
from dstack.names import did_you_mean

if TYPE_CHECKING:
    from dstack.config.profiles import Profile
    from dstack.run.job import Job
    from dstack.run.record import App, RunRecord
    from dstack.store.base import Store


@dataclass(frozen=True)
class ResourceChange:
    """One resource an update created, updated or deleted."""

    op: str
    type: str
    name: str


@dataclass(frozen=True)
class StackInfo:
    """A stack of the project as the state backend lists it."""

    name: str
    resource_count: int


@dataclass(frozen=True)
class UpdateRecord:
    """One entry of a stack's history (`pulumi stack history`).

    `version` is the update's number in the stack's history (1 for the first); `changes` is
    Pulumi's own count of resources by operation, which includes the stack's own resource
    (`pulumi:pulumi:Stack`) and explicit provider resources (`pulumi:providers:*`).
    """

    version: int
    kind: str
    result: str
    start: str
    end: str | None
    changes: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    """Everything the core asks of a backend: every backend (`dstack.stacks.local`, `aws`,
    `gcp`, `kubernetes`) is a class of this shape, constructed as `cls(profile, home)`
    (`BackendClass`)."""

    name: str
    """The backend's name: its key in `BACKENDS`, the `backend` of its profiles."""

    def store(self) -> Store:
        """The artifact and metadata store of this profile."""

    def ensure_workspace(self) -> Mapping[str, object]:
        """Bring up the profile's long-lived workspace stack (the store's bucket or folder,
        the instances' identity) unless it is up; its outputs."""

    def check_resources(self, job: Job) -> None:
        """Refuse (UsageError) a job this backend cannot run, before anything is created."""

    def plan_resources(self, job: Job) -> list[dict[str, str]]:
        """The resources a run stack for `job` would declare (for `--dry-run`)."""

    def bootstrap(self, run: RunRecord) -> str:
        """The script that starts the runner of `run` on this backend's compute."""

    def provision(
        self, run: RunRecord, bootstrap: str
    ) -> tuple[list[ResourceChange], dict[str, object]]:
        """Bring up the run's stack, whose program starts `bootstrap` on the compute;
        return the changes and where the runner runs (host, pid or instance id)."""

    def teardown(self, run_name: str) -> list[ResourceChange]:
        """Destroy the run's stack (stopping the runner if it still runs); keep history."""

    def stacks(self) -> list[StackInfo]:
        """Every stack of this profile's state backend."""

    def history(self, run_name: str) -> list[UpdateRecord]:
        """The run stack's update history, oldest first."""

    def history_command(self, run_name: str) -> str:
        """A shell command that lists the run stack's history with Pulumi itself, from any
        folder (the env it needs included, no secret in it)."""

    def clear_stale_locks(self, run_gone: Callable[[str], bool] = ...) -> list[str]:
        """Remove locks left by engine processes that no longer exist, after repairing the
        checkpoints they were saving; return their stacks. Another machine's lock in a
        shared state goes only when it is old and `run_gone(stack)`."""

    def runner_alive(self, run: RunRecord) -> bool | None:
        """Whether the run's runner still runs (None when this backend cannot tell)."""

    def runner_gone_reason(self, run: RunRecord) -> str | None:
        """Why the run's runner is gone, when the backend knows (e.g. the cloud's word on
        its instance)."""

    def identity(self) -> str:
        """Who uses this profile, as a run's `owner` records it: the AWS caller ARN, the GCP
        account, the Kubernetes user, the local user."""

    def app_address(self, run: RunRecord, app: App) -> str:
        """The URL the user opens `app` of `run` at from here; a backend that needs a tunnel
        for it (Kubernetes: a port-forward) opens one that lasts while this process runs."""


BackendClass = Callable[["Profile", Path], Backend]
"""A backend's class: `BackendClass` annotations in the backend modules check (for mypy) that
each one builds from a profile and the dstack home and is a `Backend`."""

BACKENDS: dict[str, str] = {
    "local": "dstack.stacks.local:LocalBackend",
    "aws": "dstack.stacks.aws:AwsBackend",
    "gcp": "dstack.stacks.gcp:GcpBackend",
    "kubernetes": "dstack.stacks.kubernetes:KubernetesBackend",
}
"""Backend name → `module:class`, imported only when a profile of that backend is used."""


def load_backend(profile: Profile, home: Path) -> Backend:
    """The backend of `profile`, imported lazily."""
    target = BACKENDS.get(profile.backend)
    if target is None:
        raise UsageError(
            f"unknown backend {profile.backend!r} in profile {profile.name!r}",
            did_you_mean(profile.backend, BACKENDS) or f"Known backends: {', '.join(BACKENDS)}.",
        )
    cls = cast("BackendClass", load_target(target))  # its module checks it statically
    return cls(profile, home)

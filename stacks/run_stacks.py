"""What every backend does with its stacks through the engine, in one place.

`RunStacks` is the base of the local, cloud and Kubernetes backends: it holds the profile, its
settings, the dstack home, the wheel a remote runner installs, and the engine (created on
first use: `ps`, `logs` and the checks before a run do not need pulumi, about 0.4 s of
imports), destroys a run stack (a stack never created counts as
destroyed), lists the stacks, reads a run's history, and clears the locks dead engines left
in a local state folder. It imports no pulumi.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from dstack.config.backends import ResourceChange, StackInfo, UpdateRecord
from dstack.config.profiles import Profile, duration_setting
from dstack.run.record import App, RunRecord, run_stack_name
from dstack.stacks.file_state import PROJECT_NAME, clear_stale_locks, state_folder
from dstack.stacks.shared_state import (
    clear_stale_bucket_locks,
    passphrase_copy,
    state_store,
    team_passphrase,
)
from dstack.stacks.wheel import Wheel, find_wheel
from dstack.store.base import Store

if TYPE_CHECKING:
    from dstack.stacks.engine import Engine


def _gs_state_env(credentials: str | None) -> dict[str, str]:
    """What the engine's gs:// state backend (Go CDK) reads: the profile's key file, and a
    GCS emulator as `host:port` (the Python client's `http://host:port` it would misread)."""
    env = {"GOOGLE_APPLICATION_CREDENTIALS": credentials} if credentials else {}
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if "://" in emulator:
        env["STORAGE_EMULATOR_HOST"] = emulator.split("://", 1)[1]
    return env


class RunStacks:
    """The stack operations of a backend of `profile` with its state in `home`."""

    def __init__(self, profile: Profile, home: Path) -> None:
        self.profile = profile
        self.home = home
        self.cache = home / "cache"
        self._wheel: Wheel | None = None

    def wheel(self) -> Wheel:
        """The dstack wheel a remote runner (an instance, a pod) installs: this process's,
        found or built once."""
        if self._wheel is None:
            self._wheel = find_wheel(self.profile, self.cache)
        return self._wheel

    def setting(self, key: str, default: str | None = None) -> str | None:
        """A profile setting as text (`default` when absent or empty)."""
        value = self.profile.settings.get(key)
        return default if value in (None, "") else str(value)

    @cached_property
    def bucket_state(self) -> Store | None:
        """The profile's Pulumi state as a store when it is in a bucket (a team's), opened
        once: the engine reads the team's passphrase there, and gc the engines' locks."""
        return state_store(self.profile)

    @cached_property
    def engine(self) -> Engine:
        """The engine of the profile's state backend, imported on first use; a state in a
        bucket (a team's) comes with the team's passphrase."""
        from dstack.stacks.engine import Engine

        store = self.bucket_state
        if store is None:
            return Engine(self.home, self.profile.state_url)
        copy = passphrase_copy(self.home, store.url)
        env = {}
        if (self.profile.state_url or "").startswith("gs://"):
            env.update(_gs_state_env(self.setting("credentials")))
        return Engine(self.home, self.profile.state_url,
                      passphrase_file=team_passphrase(store, copy), extra_env=env)

    @property
    def workspace_stack(self) -> str:
        """The long-lived workspace stack of this profile."""
        return f"workspace-{self.profile.name}"

    def teardown(self, run_name: str) -> list[ResourceChange]:
        """Destroy `run-<name>` (keeping its history); a stack never created is torn down."""
        return self.engine.destroy(run_stack_name(run_name), lambda: None, missing_ok=True)

    def stacks(self) -> list[StackInfo]:
        """Every stack of the profile's state backend."""
        return self.engine.list_stacks()

    def history(self, run_name: str) -> list[UpdateRecord]:
        """The run stack's update history."""
        return self.engine.history(run_stack_name(run_name))

    def history_command(self, run_name: str) -> str:
        """The `pulumi stack history` shell command for the run stack (holds no secret)."""
        return self.engine.history_command(run_stack_name(run_name))

    def identity(self) -> str:
        """Who runs here: the local user (cloud backends: their cloud identity)."""
        import getpass

        return getpass.getuser()

    def app_address(self, run: RunRecord, app: App) -> str:
        """The app's own URL, with a cloud instance's public address for `0.0.0.0`."""
        return run.app_url(app)

    def clear_stale_locks(self, run_gone: Callable[[str], bool] = lambda _: False
                          ) -> list[str]:
        """Locks of dead engines, removed; their stacks. In a local state folder, their
        checkpoints are repaired first (without starting the engine). In a bucket (a team's
        state), a lock of another machine goes only when it is older than the profile's
        `lock_timeout` and `run_gone(stack)`."""
        folder = state_folder(self.home, self.profile.state_url)
        if folder:
            return clear_stale_locks(folder, PROJECT_NAME)
        store = self.bucket_state
        if store is None:
            return []
        return clear_stale_bucket_locks(store, duration_setting(self.profile, "lock_timeout"),
                                        run_gone, time.time())

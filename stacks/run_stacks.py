"""What every backend does with its run stacks through the engine, in one place.

`RunStacks` is mixed into the local and the cloud backends: destroy a run stack (a stack
never created counts as destroyed), list the stacks, read a run's history, and clear the
locks dead engines left in a local state folder. It imports no pulumi: the local backend
creates its engine on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dstack.config.backends import ResourceChange, StackInfo, UpdateRecord
from dstack.config.profiles import Profile
from dstack.run.record import run_stack_name
from dstack.stacks.file_state import PROJECT_NAME, clear_stale_locks, state_folder

if TYPE_CHECKING:
    from dstack.stacks.engine import Engine


class RunStacks:
    """Run-stack operations for a backend with `home`, `profile` and `engine`."""

    home: Path
    profile: Profile
    engine: Engine

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

    def clear_stale_locks(self) -> list[str]:
        """Locks of dead engines in a local state folder, removed after their checkpoints
        are repaired (without starting the engine); their stacks. Locks in a bucket are left
        to `pulumi cancel`."""
        folder = state_folder(self.home, self.profile.state_url)
        return clear_stale_locks(folder, PROJECT_NAME) if folder else []

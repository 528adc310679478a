"""Where a run is in its life: its status, and which statuses are final.

Apart from the run's record (`record`), so that what only needs a status — the provider host
deciding whether a torn-down run needs salvage — reads it without the record's model.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    """Where a run is in its life."""

    SUBMITTED = "submitted"
    PROVISIONING = "provisioning"
    RUNNING = "running"
    UPLOADING = "uploading"
    DONE = "done"
    FAILED = "failed"
    STOPPED = "stopped"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        """True for the statuses a run never leaves."""
        return self in TERMINAL


TERMINAL = frozenset({Status.DONE, Status.FAILED, Status.STOPPED, Status.ABORTED})

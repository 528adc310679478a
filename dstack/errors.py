"""The one error root of dstack and its kinds.

Every error a user can meet carries what to do next (`hint`). The CLI catches `DstackError`
in one place, prints `message` and `hint`, and exits with `exit_code`.
"""

from __future__ import annotations


class DstackError(Exception):
    """Base of every error dstack raises on purpose; `exit_code` is what the CLI returns."""

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class UsageError(DstackError):
    """The command line is wrong: an unknown name, a bad flag value."""

    exit_code = 2


class SpecError(UsageError):
    """A workflow file is wrong; the message names the file, line and field."""


class NotFoundError(DstackError):
    """A run, tag or artifact that was asked for does not exist."""


class BackendError(DstackError):
    """Provisioning or tearing down infrastructure failed."""


class EngineMissingError(BackendError):
    """The Pulumi engine is not installed where dstack looks for it."""


class StackBusyError(BackendError):
    """Another process holds the Pulumi lock of a stack."""


class StoreError(DstackError):
    """The artifact and metadata store could not be read or written."""

"""The store of a cloud profile whose workspace is not up yet.

A cloud profile's bucket is created by its workspace stack, on the first run. Until then
there is nothing to read: listings are empty and every key is missing, so `ps`, `tags list`
and `run --dry-run` answer without creating anything. A write means the caller should have
brought the workspace up first (`Context.ensure_workspace`), and says so.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from pathlib import Path

from dstack.errors import DstackError, NotFoundError, StoreError
from dstack.store.base import JsonDoc, Store


class PendingStore(Store):
    """The empty view of a store whose bucket its workspace stack has not created yet."""

    def __init__(self, url: str, profile: str) -> None:
        self.url = url
        self.profile = profile

    def _missing(self, key: str) -> NotFoundError:
        return NotFoundError(f"{key} is not in the store {self.url} (profile {self.profile!r} "
                             "has not run anything yet)")

    def _refused(self) -> StoreError:
        return StoreError(f"profile {self.profile!r} has no workspace yet, so its store "
                          f"{self.url} does not exist",
                          f"Its first `dstack run --profile {self.profile}` creates it.")

    def available(self) -> bool:
        return False

    def share_refusal(self) -> DstackError:
        """No run of the profile exists yet, so there is nothing to share."""
        return NotFoundError(f"profile {self.profile!r} has not run anything yet (its store "
                             f"{self.url} does not exist), so there is nothing to share",
                             f"Its first `dstack run --profile {self.profile}` creates it.")

    def get_bytes(self, key: str) -> bytes:
        raise self._missing(key)

    def get_file(self, key: str, path: Path) -> None:
        raise self._missing(key)

    def size(self, key: str) -> int:
        raise self._missing(key)

    def exists(self, key: str) -> bool:
        return False

    def list(self, prefix: str) -> list[str]:
        return []

    def list_versions(self, prefix: str) -> dict[str, str]:
        return {}

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        return []

    def delete(self, key: str) -> None:
        """Nothing is there to delete."""

    def put_bytes(self, key: str, data: bytes) -> None:
        raise self._refused()

    def put_file(self, key: str, path: Path) -> None:
        raise self._refused()

    def create_bytes(self, key: str, data: bytes) -> bool:
        raise self._refused()

    def update_json(self, key: str, mutate: Callable[[JsonDoc], JsonDoc | None]) -> JsonDoc:
        raise self._refused()

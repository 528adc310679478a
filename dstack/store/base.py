"""Artifact and metadata stores: the same keys on a local folder, S3 and GCS.

Layout (DESIGN.md): `runs/<run>/run.json`, `runs/<run>/logs/…`, `runs/<run>/artifacts/<path>`,
`tags/<tag>.json`, `code/<hash>.tar.gz`, each spelled by `dstack.store.keys`. Keys are
`/`-separated relative paths. Writes are atomic: a reader sees the old object or the new one,
never half of one.
"""

from __future__ import annotations

import builtins
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from dstack.errors import DstackError, StoreError, UsageError
from dstack.json_types import JsonDoc as JsonDoc  # the stores' documents (re-exported)
from dstack.lazy import load_class


def check_key(key: str) -> str:
    """Return `key` if it is a safe relative store key; raise otherwise."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\0" in key or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid store key {key!r}")
    return key


class Store(ABC):
    """Objects under string keys, plus JSON helpers shared by every store."""

    url: str
    poll_s: float = 0.2
    """How often a follower reads a run's documents here (each read is a request)."""

    @classmethod
    def from_url(cls, url: str) -> Store:
        """The store at `url` (a URL of the scheme `STORES` registers the class for); a store
        that is not registered there is not opened from a URL."""
        raise UsageError(f"a {cls.__name__} is not opened from a URL ({url})")

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` at `key`, replacing any object there."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object at `key`; NotFoundError when there is none."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Upload the file at `path` to `key`."""

    @abstractmethod
    def get_file(self, key: str, path: Path) -> None:
        """Download `key` into the file `path` (written aside, then renamed)."""

    @abstractmethod
    def create_bytes(self, key: str, data: bytes) -> bool:
        """Write `data` at `key` only if nothing is there; False when something was."""

    @abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is at `key`."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder-like prefix ending in `/`), sorted."""

    @abstractmethod
    def list_versions(self, prefix: str) -> dict[str, str]:
        """Every key under `prefix` with a token that changes whenever its object does."""

    @abstractmethod
    def list_dirs(self, prefix: str) -> builtins.list[str]:
        """The names one level below `prefix` (like `ls`), sorted."""

    @abstractmethod
    def size(self, key: str) -> int:
        """Size in bytes of the object at `key`."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove the object at `key` if present."""

    @abstractmethod
    def update_json(self, key: str, mutate: Callable[[JsonDoc], JsonDoc | None]) -> JsonDoc:
        """Read-modify-write the JSON document at `key` without losing concurrent updates.

        `mutate` gets the current document ({} when absent) and returns the new one, or None
        to leave it as it is. Returns the document as stored afterwards.
        """

    def folder_version(self, prefix: str) -> str | None:
        """A token that changes whenever an object directly under `prefix` is written or
        removed, told without listing them; None when the store cannot tell it cheaply (or
        not reliably now): the caller lists `list_versions` instead."""
        return None

    def list_times(self, prefix: str) -> dict[str, float]:
        """Every key under `prefix` with the time (epoch seconds) its object was last written.

        A store that cannot tell returns {}: nothing in it ever looks old.
        """
        return {}

    def available(self) -> bool:
        """Whether the store's bucket (or folder) exists, so reads mean something.

        A cloud profile's bucket comes with its workspace stack, on the first run.
        """
        return True

    def share_refusal(self) -> DstackError:
        """Why this store gives no download links, and what to do (a store that signs links
        overrides `check_share` and `share_url` instead)."""
        return UsageError(f"the store {self.url} cannot give download links",
                          "Share from a profile whose store is an S3 or GCS bucket.")

    def check_share(self, expires_s: int) -> None:
        """Raise a DstackError saying why and what to do when this store cannot give download
        links lasting `expires_s` seconds (`share_url`); return when it can."""
        raise self.share_refusal()

    def share_url(self, key: str, expires_s: int) -> str:
        """A URL that anyone can GET `key` with, without credentials, for `expires_s` seconds:
        a signed link, nothing is made public. `check_share` tells first whether it can."""
        raise self.share_refusal()

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under `prefix`."""
        for key in self.list(prefix):
            self.delete(key)

    def get_json(self, key: str) -> JsonDoc:
        """The JSON document at `key`."""
        return load_json_doc(self.get_bytes(key), f"{self.url}/{key}")

    def put_json(self, key: str, doc: JsonDoc) -> None:
        """Write a JSON document at `key`."""
        self.put_bytes(key, dump_json_doc(doc))

    def create_json(self, key: str, doc: JsonDoc) -> bool:
        """Write a JSON document at `key` only if nothing is there."""
        return self.create_bytes(key, dump_json_doc(doc))


MAX_SHARE_S = 7 * 86400
"""The longest an S3 presigned URL or a GCS V4 signed URL can last: 7 days."""


def check_share_limit(expires_s: int, kind: str) -> None:
    """Refuse links that last under a second or longer than `MAX_SHARE_S`, which `kind` (the
    links' name, e.g. "S3 presigned URLs") cannot."""
    if expires_s < 1:
        raise UsageError(f"a link must last a second or more, not {expires_s} s",
                         "Give --expires like 24h, 90m or 7d.")
    if expires_s > MAX_SHARE_S:
        raise UsageError(f"{kind} last at most 7 days (604800 s); {expires_s} s is longer",
                         "Give --expires 7d or less, and share again when the links run out.")


def load_json_doc(data: bytes, where: str) -> JsonDoc:
    """`data` parsed as a JSON object; StoreError naming `where` otherwise."""
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{where} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise StoreError(f"{where} is not a JSON object")
    return doc


def dump_json_doc(doc: JsonDoc) -> bytes:
    """A JSON document as the stores write it."""
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


STORES: dict[str, str] = {
    "file": "dstack.store.local:LocalStore",
    "s3": "dstack.store.s3:S3Store",
    "gs": "dstack.store.gcs:GCSStore",
}
"""URL scheme → store class (`module:Class`), imported lazily."""


def without_local_profile(url: str) -> str:
    """The store URL as another machine (an instance, a pod) opens it: without the `profile`
    option, which names credentials of this machine; it has credentials of its own."""
    parsed = urlparse(url)
    query = [(k, v) for k, v in parse_qsl(parsed.query) if k != "profile"]
    return urlunparse(parsed._replace(query=urlencode(query)))


def open_store(url: str) -> Store:
    """The store at `url` (`file:///path`; cloud schemes come with their backends)."""
    parsed = urlparse(url)
    target = STORES.get(parsed.scheme)
    if target is None:
        raise UsageError(f"unsupported store URL {url!r}",
                         f"Supported schemes: {', '.join(s + '://' for s in STORES)}.")
    return load_class(target, Store).from_url(url)  # type: ignore[type-abstract]
    # (mypy refuses an abstract class for type[T]; load_class only checks issubclass)

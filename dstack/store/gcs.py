"""The store in a Google Cloud Storage bucket: `gs://bucket/prefix`.

URL query option: `project` (else the one of the application-default credentials).
Credentials are the application-default ones (`gcloud auth application-default login`, or
GOOGLE_APPLICATION_CREDENTIALS naming a key file); they are referenced, never copied. With
`STORAGE_EMULATOR_HOST` set (e.g. `http://127.0.0.1:4443`) the client talks to that
emulator with anonymous credentials.

Integrity: GCS computes CRC32C and MD5 of every object; uploads send the CRC32C for the
server to check, and downloads are verified against it. Files over 8 MiB go through a
chunked resumable upload. Atomicity: `create_bytes` uploads with `if_generation_match=0` and
`update_json` reads the generation and writes with `if_generation_match=<generation>`,
retrying when another writer got there first.

Download links (`share_url`) are V4 signed URLs, signed by credentials that hold a private
key (a service-account key file); user credentials and the emulator's anonymous ones are
refused with the reason.
"""

from __future__ import annotations

import builtins
import os
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlencode, urlparse

import google.auth.credentials as gauth_credentials
import google.auth.exceptions as gauth
import requests
from google.api_core import exceptions as gex
from google.cloud import storage
from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
from google.cloud.storage.retry import DEFAULT_RETRY

from dstack.errors import NotFoundError, StoreError, UsageError
from dstack.files import replacing
from dstack.store.base import (
    JsonDoc,
    Store,
    check_key,
    check_share_limit,
    dump_json_doc,
    load_json_doc,
)

CHUNK_SIZE = 16 * 1024 * 1024  # resumable upload chunk (a multiple of 256 KiB)
DELETE_THREADS = 16
POOL_SIZE = 32
UPDATE_ATTEMPTS = 100
CHECKSUM = "crc32c"
_BUCKET_404 = {"upload", "create", "update", "listing"}
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_SIGNING_HINT = ("Sign with a service account's key file: run the command with "
                 "GOOGLE_APPLICATION_CREDENTIALS=KEY.json (e.g. the file the gcp profile's "
                 "`credentials` setting names; `gcloud iam service-accounts keys create` makes "
                 "one). The account needs storage.objects.get on the bucket for the links to "
                 "work.")
_CREDENTIALS_HINT = ("Log in with `gcloud auth application-default login`, or point "
                     "GOOGLE_APPLICATION_CREDENTIALS at a service-account key file; the identity "
                     "needs roles/storage.objectAdmin on the bucket.")


def _kind(creds: object) -> str:
    """Credentials as a user knows them (their class, else)."""
    name = f"{type(creds).__module__}.{type(creds).__qualname__}"
    return {"google.oauth2.credentials.Credentials": "user credentials",
            "google.auth.compute_engine.credentials.Credentials":
                "the credentials of this VM's metadata server"}.get(name, name)


def _prefix(path: str) -> str:
    """A store prefix inside the bucket: '' or 'a/b/'."""
    path = path.strip("/")
    return check_key(path) + "/" if path else ""


class _Blob(Protocol):
    """What a listed blob is read for (google-cloud-storage ships no types)."""

    @property
    def name(self) -> str: ...
    @property
    def generation(self) -> int | None: ...
    @property
    def updated(self) -> datetime | None: ...


class _Listing(Protocol):
    """A listing's page iterator: its blobs, then (with a delimiter) the prefixes it met."""

    @property
    def prefixes(self) -> set[str]: ...
    def __iter__(self) -> Iterator[_Blob]: ...


class GCSStore(Store):
    """Objects under `prefix` in a GCS bucket."""

    def __init__(self, bucket: str, prefix: str = "", *, project: str | None = None,
                 client: storage.Client | None = None) -> None:
        self.prefix = _prefix(prefix)
        self.base = f"gs://{bucket}/{self.prefix}".rstrip("/")
        self.url = f"{self.base}?{urlencode({'project': project})}" if project else self.base
        """Reopens this same store with `open_store` (the runner gets it)."""
        try:
            self.client = client or storage.Client(project=project)
        except gauth.DefaultCredentialsError as exc:
            raise StoreError(f"no Google Cloud credentials for the store {self.base}",
                             _CREDENTIALS_HINT) from exc
        self.bucket = self.client.bucket(bucket)
        adapter = requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE)
        for scheme in ("http://", "https://"):  # room for the threads of sync and deletes
            self.client._http.mount(scheme, adapter)

    @classmethod
    def from_url(cls, url: str) -> GCSStore:
        """`gs://bucket/prefix?project=…`."""
        parsed = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        if parsed.scheme != "gs" or not parsed.netloc or set(query) - {"project"}:
            raise UsageError(f"invalid GCS store URL {url!r}",
                             "Write it as gs://BUCKET/PREFIX, optionally with ?project=PROJECT.")
        return cls(parsed.netloc, parsed.path, project=query.get("project"))

    # -- helpers ---------------------------------------------------------------------------

    def _blob(self, key: str, chunk_size: int | None = None) -> storage.Blob:
        return self.bucket.blob(self.prefix + check_key(key), chunk_size=chunk_size)

    def _where(self, key: str) -> str:
        return f"gs://{self.bucket.name}/{self.prefix}{key}"

    @contextmanager
    def _errors(self, key: str, action: str) -> Iterator[None]:
        """Turn client errors into NotFoundError/StoreError naming bucket, key and a fix."""
        where = self._where(key)
        try:
            yield
        except gex.NotFound as exc:
            # Writes and listings only 404 when the bucket is missing; reads say so in words.
            if action in _BUCKET_404 or "bucket does not exist" in str(exc).lower():
                raise StoreError(f"the bucket {self.bucket.name} of the store {self.base} does "
                                 "not exist", "Check the store URL of the profile (`dstack "
                                 "config`) or create the bucket.") from exc
            raise NotFoundError(f"{key} is not in the store {self.base}") from exc
        except (gex.Forbidden, gex.Unauthorized, gauth.RefreshError,
                gauth.DefaultCredentialsError) as exc:
            raise StoreError(f"GCS denied the {action} of {where}: {exc}",
                             _CREDENTIALS_HINT) from exc
        except DataCorruption as exc:
            saved = "nothing was saved" if action == "download" else "it may be stored damaged"
            raise StoreError(f"checksum mismatch in the {action} of {where}: the data does not "
                             "match the CRC32C that GCS holds for it", "Write it again (e.g. "
                             f"re-run the job that produced it); {saved}.") from exc
        except (gex.GoogleAPIError, InvalidResponse) as exc:
            raise StoreError(f"GCS {action} of {where} failed: {exc}") from exc
        except requests.exceptions.RequestException as exc:
            raise StoreError(f"could not reach GCS for the {action} of {where}: {exc}",
                             "Check the network (and STORAGE_EMULATOR_HOST if set); the "
                             "operation can be retried.") from exc

    def _read(self, key: str) -> tuple[bytes, int]:
        """Body and generation of `key`, CRC32C-verified."""
        blob = self._blob(key)
        data: bytes = blob.download_as_bytes(checksum=CHECKSUM, retry=DEFAULT_RETRY)
        return data, int(blob.generation or 0)

    # -- the Store interface ---------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key, "upload"):
            self._blob(key).upload_from_string(data, checksum=CHECKSUM, retry=DEFAULT_RETRY)

    def get_bytes(self, key: str) -> bytes:
        with self._errors(key, "download"):
            return self._read(key)[0]

    def put_file(self, key: str, path: Path) -> None:
        blob = self._blob(key, chunk_size=CHUNK_SIZE)
        with open(path, "rb") as f, self._errors(key, "upload"):  # FileNotFoundError passes
            blob.upload_from_file(f, size=os.fstat(f.fileno()).st_size, checksum=CHECKSUM,
                                  retry=DEFAULT_RETRY)

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as tmp, self._errors(key, "download"):
            self._blob(key).download_to_filename(str(tmp), checksum=CHECKSUM,
                                                 retry=DEFAULT_RETRY)

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Upload with `if_generation_match=0`. A retried request whose first try landed
        reports False."""
        with self._errors(key, "create"):
            try:
                self._blob(key).upload_from_string(data, checksum=CHECKSUM,
                                                   if_generation_match=0)
            except gex.PreconditionFailed:
                return False
        return True

    def available(self) -> bool:
        """Whether the bucket exists; StoreError when that cannot be told."""
        with self._errors("", "lookup of the bucket"):
            return bool(self.bucket.exists(retry=DEFAULT_RETRY))

    def exists(self, key: str) -> bool:
        with self._errors(key, "lookup"):
            return bool(self._blob(key).exists(retry=DEFAULT_RETRY))

    def _blobs(self, prefix: str, **kwargs: object) -> _Listing:
        """The page iterator of a listing (it pages through every result)."""
        blobs: _Listing = self.client.list_blobs(
            self.bucket, prefix=self.prefix + _prefix(prefix), retry=DEFAULT_RETRY, **kwargs)
        return blobs

    def list(self, prefix: str) -> list[str]:
        cut = len(self.prefix)
        with self._errors(prefix, "listing"):
            return sorted(b.name[cut:] for b in self._blobs(prefix))

    def list_versions(self, prefix: str) -> dict[str, str]:
        cut = len(self.prefix)
        with self._errors(prefix, "listing"):
            return {b.name[cut:]: str(b.generation) for b in self._blobs(prefix)}

    def list_times(self, prefix: str) -> dict[str, float]:
        cut = len(self.prefix)
        with self._errors(prefix, "listing"):
            return {b.name[cut:]: b.updated.timestamp() for b in self._blobs(prefix)
                    if b.updated is not None}

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        cut = len(self.prefix + _prefix(prefix))
        with self._errors(prefix, "listing"):
            pages = self._blobs(prefix, delimiter="/")
            names = {b.name[cut:] for b in pages}
            names.update(p[cut:].rstrip("/") for p in pages.prefixes)
        return sorted(n for n in names if n)

    def size(self, key: str) -> int:
        with self._errors(key, "lookup"):
            blob = self.bucket.get_blob(self.prefix + check_key(key), retry=DEFAULT_RETRY)
        if blob is None:
            raise NotFoundError(f"{key} is not in the store {self.base}")
        return int(blob.size)

    def delete(self, key: str) -> None:
        with self._errors(key, "delete"), suppress(gex.NotFound):
            self._blob(key).delete(retry=DEFAULT_RETRY)

    def check_share(self, expires_s: int) -> None:
        """V4 signed URLs last at most 7 days, and need credentials that can sign."""
        check_share_limit(expires_s, "GCS V4 signed URLs")
        creds = self.client._credentials
        if isinstance(creds, gauth_credentials.Signing):
            return
        emulator = os.environ.get(EMULATOR_ENV)
        if emulator and isinstance(creds, gauth_credentials.AnonymousCredentials):
            raise UsageError(
                f"the store {self.base} is the GCS emulator at {emulator} "
                f"({EMULATOR_ENV}), which the client reaches with anonymous credentials: "
                "they cannot sign a link", f"Share from a real GCS bucket (unset "
                f"{EMULATOR_ENV}). The emulator (fake-gcs-server) checks no signature anyway: its "
                "objects are readable by anyone who reaches it.")
        raise UsageError(
            f"the Google credentials of the store {self.base} ({_kind(creds)}) hold no private "
            "key, so they cannot sign a link (user credentials, such as those of `gcloud auth "
            "application-default login`, never can)", _SIGNING_HINT)

    def share_url(self, key: str, expires_s: int) -> str:
        """A V4 signed GET URL signed with the store's credentials (a service account's key):
        signing sends no request; GCS checks the signature, the expiry and the account's
        storage.objects.get when the link is used."""
        self.check_share(expires_s)
        with self._errors(key, "signing of a link"):
            url: str = self._blob(key).generate_signed_url(
                version="v4", expiration=timedelta(seconds=expires_s), method="GET")
        return url

    def delete_prefix(self, prefix: str) -> None:
        """Concurrent deletes (batch requests are not supported by the emulator)."""
        keys = self.list(prefix)
        if keys:
            with ThreadPoolExecutor(min(DELETE_THREADS, len(keys))) as pool:
                list(pool.map(self.delete, keys))

    def update_json(self, key: str, mutate: Callable[[JsonDoc], JsonDoc | None]) -> JsonDoc:
        where = self._where(key)
        for attempt in range(UPDATE_ATTEMPTS):
            try:
                with self._errors(key, "download"):
                    data, generation = self._read(key)
                current = load_json_doc(data, where)
            except NotFoundError:
                current, generation = {}, 0
            new = mutate(dict(current))
            if new is None:
                return current
            with self._errors(key, "update"):
                try:
                    self._blob(key).upload_from_string(
                        dump_json_doc(new), content_type="application/json", checksum=CHECKSUM,
                        if_generation_match=generation)
                    return new
                except gex.PreconditionFailed:
                    pass  # another writer got there first: read again
            time.sleep(random.uniform(0, min(0.5, 0.005 * 2 ** min(attempt, 7))))
        raise StoreError(f"gave up updating {where} after {UPDATE_ATTEMPTS} attempts: other "
                         "writers kept changing it", "Try again.")



"""The store in an S3 bucket (or any S3-compatible server): `s3://bucket/prefix`.

URL query options: `endpoint_url` (an S3-compatible server; else env `DSTACK_S3_ENDPOINT_URL`,
else AWS), `region` (else the AWS config), `profile` (an AWS profile: credentials are
referenced by name, never copied). With a custom endpoint, path-style addressing is used.

Integrity: every object carries the SHA-256 of its whole body in the metadata field
`dstack-sha256`; downloads are checked against it (objects written by other tools, without
the field, are not checked). Large files go through concurrent multipart transfers.

Atomicity: `create_bytes` is a conditional PUT (`If-None-Match: *`) and `update_json` an
optimistic read-modify-write (`If-Match: <ETag>`, retried on 412). A server that answers
501 NotImplemented to a conditional PUT gets a documented fallback: check-then-put, which is
NOT atomic (two racing writers can both win); a warning is logged once per store.

Download links (`share_url`) are SigV4 presigned GET URLs of the store's client (its
credentials and endpoint), at most 7 days long; nothing is made public.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TypedDict
from urllib.parse import parse_qs, urlencode, urlparse

import boto3
import botocore.exceptions as bex
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

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

log = logging.getLogger(__name__)

SHA_FIELD = "dstack-sha256"
ENDPOINT_ENV = "DSTACK_S3_ENDPOINT_URL"
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_SIZE = 16 * 1024 * 1024
CONCURRENCY = 8
UPDATE_ATTEMPTS = 100
DELETE_BATCH = 1000  # the most keys S3 accepts in one DeleteObjects call
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
           "InvalidToken", "TokenRefreshRequired", "RequestExpired", "AllAccessDisabled", "403"}
_MISSING = {"NoSuchKey", "NotFound", "404"}
_CONFLICT = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}
_UNSUPPORTED = {"NotImplemented", "501"}


def _prefix(path: str) -> str:
    """A store prefix inside the bucket: '' or 'a/b/'."""
    path = path.strip("/")
    return check_key(path) + "/" if path else ""


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _Object(TypedDict):
    """What a listing says of an object (the fields read of it)."""

    Key: str
    ETag: str
    LastModified: datetime


class _CommonPrefix(TypedDict):
    Prefix: str


class _Page(TypedDict, total=False):
    """A page of `list_objects_v2` (the fields read of it)."""

    Contents: list[_Object]
    CommonPrefixes: list[_CommonPrefix]


class S3Store(Store):
    """Objects under `prefix` in an S3 bucket."""

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 region: str | None = None, profile: str | None = None,
                 transfer: TransferConfig | None = None) -> None:
        self.bucket = bucket
        self.prefix = _prefix(prefix)
        self.endpoint_url = endpoint_url or os.environ.get(ENDPOINT_ENV) or None
        self.profile = profile
        query = {k: v for k, v in (("endpoint_url", self.endpoint_url), ("region", region),
                                   ("profile", profile)) if v}
        self.base = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.url = f"{self.base}?{urlencode(query)}" if query else self.base
        """Reopens this same store with `open_store` (the runner gets it)."""
        self.transfer = transfer or TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=PART_SIZE,
            max_concurrency=CONCURRENCY, use_threads=True)
        self._conditional = True
        try:
            session = boto3.session.Session(profile_name=profile, region_name=region)
        except bex.ProfileNotFound as exc:
            raise StoreError(f"the AWS profile {profile!r} of the store {self.base} is not "
                             "configured", self._credentials_hint()) from exc
        self.region = session.region_name
        config = Config(max_pool_connections=4 * CONCURRENCY, signature_version="s3v4",
                        retries={"mode": "standard", "max_attempts": 5},
                        s3={"addressing_style": "path"} if self.endpoint_url else None)
        # boto3 ships no types: the client is untyped (its listing pages are `_Page`s).
        self.client = session.client("s3", endpoint_url=self.endpoint_url, config=config)

    @classmethod
    def from_url(cls, url: str) -> S3Store:
        """`s3://bucket/prefix?endpoint_url=…&region=…&profile=…`."""
        parsed = urlparse(url)
        query = {k: v[-1] for k, v in parse_qs(parsed.query).items()}
        unknown = set(query) - {"endpoint_url", "region", "profile"}
        if parsed.scheme != "s3" or not parsed.netloc or unknown:
            raise UsageError(f"invalid S3 store URL {url!r}",
                             "Write it as s3://BUCKET/PREFIX, optionally with "
                             "?endpoint_url=URL&region=REGION&profile=PROFILE.")
        return cls(parsed.netloc, parsed.path, endpoint_url=query.get("endpoint_url"),
                   region=query.get("region"), profile=query.get("profile"))

    # -- helpers ---------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _list_prefix(self, prefix: str) -> str:
        return self.prefix + _prefix(prefix)

    def _where(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{key}"

    def _credentials_hint(self) -> str:
        name = self.profile or os.environ.get("AWS_PROFILE") or "default"
        return (f"dstack uses the AWS profile {name!r}. Check it with `aws sts "
                f"get-caller-identity --profile {name}`; fix it with `aws configure --profile "
                f"{name}` (or `aws sso login --profile {name}`), or name another profile with "
                f"?profile= in the store URL. The identity needs s3:GetObject, s3:PutObject, "
                f"s3:ListBucket and s3:DeleteObject on the bucket {self.bucket}.")

    @contextmanager
    def _errors(self, key: str, action: str) -> Iterator[None]:
        """Turn boto errors into NotFoundError/StoreError naming bucket, key and a fix."""
        where = self._where(key)
        try:
            yield
        except bex.ClientError as exc:
            code = _code(exc)
            if code in _MISSING:
                raise NotFoundError(f"{key} is not in the store {self.base}") from exc
            if code == "NoSuchBucket":
                raise StoreError(f"the bucket {self.bucket} of the store {self.base} does not "
                                 "exist", "Check the store URL of the profile (`dstack config`)"
                                 " or create the bucket.") from exc
            if code in _DENIED:
                raise StoreError(f"S3 denied the {action} of {where} ({code})",
                                 self._credentials_hint()) from exc
            raise StoreError(f"S3 {action} of {where} failed: {exc}") from exc
        except (bex.NoCredentialsError, bex.PartialCredentialsError) as exc:
            raise StoreError(f"no AWS credentials for the {action} of {where}",
                             self._credentials_hint()) from exc
        except (bex.EndpointConnectionError, bex.ConnectionClosedError,
                bex.ConnectTimeoutError, bex.ReadTimeoutError) as exc:
            raise StoreError(f"could not reach S3 ({self.endpoint_url or 'AWS'}) for the "
                             f"{action} of {where}: {exc}", "Check the network and the "
                             "endpoint_url of the store; the operation can be retried.") from exc
        except S3UploadFailedError as exc:
            if any(c in str(exc) for c in ("AccessDenied", "InvalidAccessKeyId", "Forbidden")):
                raise StoreError(f"S3 denied the {action} of {where}",
                                 self._credentials_hint()) from exc
            raise StoreError(f"S3 {action} of {where} failed: {exc}") from exc
        except bex.BotoCoreError as exc:
            raise StoreError(f"S3 {action} of {where} failed: {exc}") from exc

    def _put(self, key: str, data: bytes, **cond: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data,
                               Metadata={SHA_FIELD: hashlib.sha256(data).hexdigest()}, **cond)

    def _get(self, key: str) -> tuple[bytes, str]:
        """Body and ETag of `key`, checked against its SHA-256."""
        resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        data: bytes = resp["Body"].read()
        expected = resp.get("Metadata", {}).get(SHA_FIELD)
        if expected and hashlib.sha256(data).hexdigest() != expected:
            raise self._corrupt(key)
        return data, resp["ETag"]

    def _corrupt(self, key: str) -> StoreError:
        return StoreError(f"checksum mismatch: {self._where(key)} does not match the SHA-256 "
                          "recorded when it was written (corrupted or changed by another tool)",
                          "Write it again (e.g. re-run the job that produced it); nothing was "
                          "saved from this download.")

    def _conditional_put(self, key: str, data: bytes, etag: str | None) -> bool:
        """Put `data` if `key` still has `etag` (absent when None); False on a lost race."""
        cond = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        if not self._conditional:
            return self._unconditional_put(key, data, etag)
        try:
            self._put(key, data, **cond)
            return True
        except bex.ClientError as exc:
            code = _code(exc)
            if code in _CONFLICT:
                return False
            if code not in _UNSUPPORTED:
                raise
        log.warning("%s does not support conditional writes; falling back to check-then-put, "
                    "which is not atomic", self.endpoint_url or "S3")
        self._conditional = False
        return self._unconditional_put(key, data, etag)

    def _unconditional_put(self, key: str, data: bytes, etag: str | None) -> bool:
        try:
            current = self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ETag"]
        except bex.ClientError as exc:
            if _code(exc) not in _MISSING:
                raise
            current = None
        if current != etag:
            return False
        self._put(key, data)
        return True

    # -- the Store interface ---------------------------------------------------------------

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key, "upload"):
            self._put(key, data)

    def get_bytes(self, key: str) -> bytes:
        with self._errors(key, "download"):
            return self._get(key)[0]

    def put_file(self, key: str, path: Path) -> None:
        """A file below the multipart threshold is read once, hashed and sent in one PUT; a
        larger one is hashed, then sent by the transfer manager in concurrent parts."""
        full = self._key(key)
        # FileNotFoundError passes through (sync.py relies on it)
        if path.stat().st_size < MULTIPART_THRESHOLD:
            self.put_bytes(key, path.read_bytes())
            return
        digest = _sha256_file(path)
        with self._errors(key, "upload"):
            self.client.upload_file(str(path), self.bucket, full, Config=self.transfer,
                                    ExtraArgs={"Metadata": {SHA_FIELD: digest}})

    def get_file(self, key: str, path: Path) -> None:
        full = self._key(key)
        with replacing(path) as tmp, self._errors(key, "download"):
            for _attempt in range(3):
                head = self.client.head_object(Bucket=self.bucket, Key=full)
                path.parent.mkdir(parents=True, exist_ok=True)
                self.client.download_file(self.bucket, full, str(tmp), Config=self.transfer)
                expected = head.get("Metadata", {}).get(SHA_FIELD)
                if not expected or _sha256_file(tmp) == expected:
                    return  # `replacing` renames it into place
                again = self.client.head_object(Bucket=self.bucket, Key=full)
                if again["ETag"] == head["ETag"]:
                    raise self._corrupt(key)
                # replaced while we downloaded: fetch the new object
            raise StoreError(f"{self._where(key)} kept changing while it was downloaded",
                             "Try again once its writer has finished.")

    def create_bytes(self, key: str, data: bytes) -> bool:
        """Conditional PUT. A retried request whose first try landed reports False."""
        with self._errors(key, "create"):
            return self._conditional_put(key, data, None)

    def available(self) -> bool:
        """Whether the bucket exists (HEAD bucket: a 404 when it does not)."""
        try:
            with self._errors("", "lookup of the bucket"):
                self.client.head_bucket(Bucket=self.bucket)
        except NotFoundError:
            return False
        return True

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except NotFoundError:
            return False
        return True

    def _pages(self, prefix: str, **kwargs: object) -> Iterator[_Page]:
        with self._errors(prefix, "listing"):
            paginator = self.client.get_paginator("list_objects_v2")
            yield from paginator.paginate(Bucket=self.bucket, Prefix=self._list_prefix(prefix),
                                          **kwargs)

    def list(self, prefix: str) -> list[str]:
        cut = len(self.prefix)
        return sorted(obj["Key"][cut:] for page in self._pages(prefix)
                      for obj in page.get("Contents", []))

    def list_versions(self, prefix: str) -> dict[str, str]:
        cut = len(self.prefix)
        return {obj["Key"][cut:]: str(obj["ETag"]) for page in self._pages(prefix)
                for obj in page.get("Contents", [])}

    def list_times(self, prefix: str) -> dict[str, float]:
        cut = len(self.prefix)
        return {obj["Key"][cut:]: obj["LastModified"].timestamp() for page in self._pages(prefix)
                for obj in page.get("Contents", [])}

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        cut = len(self._list_prefix(prefix))
        names: set[str] = set()
        for page in self._pages(prefix, Delimiter="/"):
            names.update(p["Prefix"][cut:].rstrip("/") for p in page.get("CommonPrefixes", []))
            names.update(obj["Key"][cut:] for obj in page.get("Contents", []))
        return sorted(n for n in names if n)

    def size(self, key: str) -> int:
        with self._errors(key, "lookup"):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        with self._errors(key, "delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def check_share(self, expires_s: int) -> None:
        """S3 presigned URLs last at most 7 days."""
        check_share_limit(expires_s, "S3 presigned URLs")

    def share_url(self, key: str, expires_s: int) -> str:
        """A presigned GET URL (SigV4) signed with the store's credentials, at its endpoint.

        Signing sends no request: S3 checks the signature, the expiry and the identity's
        s3:GetObject when the link is used. A link signed with temporary credentials (SSO,
        an assumed role) stops working when they expire, if that is sooner.
        """
        self.check_share(expires_s)
        with self._errors(key, "signing of a link"):
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)},
                ExpiresIn=expires_s, HttpMethod="GET")
        return url

    def delete_prefix(self, prefix: str) -> None:
        keys = [self.prefix + k for k in self.list(prefix)]
        for i in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": k} for k in keys[i:i + DELETE_BATCH]]
            with self._errors(prefix, "delete"):
                resp = self.client.delete_objects(Bucket=self.bucket,
                                                  Delete={"Objects": batch, "Quiet": True})
            if errors := resp.get("Errors"):
                first = errors[0]
                raise StoreError(f"S3 could not delete {len(errors)} objects under "
                                 f"{self._where(prefix)}, e.g. {first.get('Key')}: "
                                 f"{first.get('Code')} {first.get('Message')}",
                                 self._credentials_hint())

    def update_json(self, key: str, mutate: Callable[[JsonDoc], JsonDoc | None]) -> JsonDoc:
        with self._errors(key, "update"):
            for attempt in range(UPDATE_ATTEMPTS):
                try:
                    data, etag = self._get(key)
                    current = load_json_doc(data, self._where(key))
                except bex.ClientError as exc:
                    if _code(exc) not in _MISSING:
                        raise
                    current, etag = {}, None
                new = mutate(dict(current))
                if new is None:
                    return current
                if self._conditional_put(key, dump_json_doc(new), etag):
                    return new
                time.sleep(random.uniform(0, min(0.5, 0.005 * 2 ** min(attempt, 7))))
        raise StoreError(f"gave up updating {self._where(key)} after {UPDATE_ATTEMPTS} "
                         "attempts: other writers kept changing it", "Try again.")


def _code(exc: bex.ClientError) -> str:
    err = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(err.get("Code") or status or "")



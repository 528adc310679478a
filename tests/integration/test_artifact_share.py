"""`dstack artifacts share`: signed download links, fetched with plain urllib, no credentials.

What the servers on loopback check of a link (found out here, see the xfail tests):

- moto 5.2.5 serves an object to a GET whose query carries a signature without checking the
  signature or the expiry (it refuses a GET without one: the object is private). So the
  link's SigV4 signature and expiry are checked here by recomputing them with the store's
  key, and "an expired link gets 403" is an xfail (it passes as XPASS once moto checks).
- fake-gcs-server (the GCS emulator) serves every object to anyone, signed or not. The
  store's own (anonymous) emulator credentials cannot sign, which is refused; a store with a
  service-account key signs, the signature is checked with the key's public half, and the
  emulator serves the link.
- The local backend refuses, through the CLI.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
import yaml

from dstack.errors import NotFoundError, UsageError
from dstack.run.artifacts import share, upload_as_tag
from dstack.store.base import Store, open_store

from .harness import Dstack
from .servers import FAKE_AWS, Server, env_patch, gcs_emulator, moto_server  # noqa: F401
from .standin_clouds import GcpCloud, gcp_cloud  # noqa: F401

FILES = {"data/a b.csv": b"x,y\n1,2\n", "data/part/b.bin": bytes(range(256)) * 40,
         "model.bin": b"\x00weights\xff" * 1000}


def _fetch(url: str) -> tuple[int, bytes]:
    """GET `url` with nothing but the URL: (status, body)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return int(resp.status), bytes(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _tagged(store: Store, tmp_path: Path, tag: str) -> str:
    """FILES uploaded as the artifacts of a finished run tagged `tag`; the run's name."""
    root = tmp_path / "src"
    for rel, data in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return upload_as_tag(store, tag, ["data", "model.bin"], root, "test", "aws").name


def _s3_store(server: Server) -> tuple[Store, str]:
    """A fresh prefix of the moto bucket as a store; (store, its URL)."""
    url = f"s3://{server.bucket}/share-{secrets.token_hex(4)}?endpoint_url={server.url}"
    return open_store(url), url


def _canonical_query(query: list[tuple[str, str]], signature: str) -> str:
    return "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}"
                    for k, v in sorted(query) if k != signature)


def _string_to_sign(url: str, vendor: str, algorithm: str) -> tuple[str, str, dict[str, str]]:
    """What a V4 signed GET `url` signs (`vendor`: Amz or Goog): (string, scope, query)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    canonical = "\n".join(["GET", parts.path, _canonical_query(query, f"X-{vendor}-Signature"),
                           f"host:{parts.netloc}", "", "host", "UNSIGNED-PAYLOAD"])
    scope = params[f"X-{vendor}-Credential"].split("/", 1)[1]
    to_sign = "\n".join([algorithm, params[f"X-{vendor}-Date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    return to_sign, scope, params


def _check_sigv4(url: str, secret: str) -> dict[str, str]:
    """Recompute the SigV4 signature of a presigned GET `url` with `secret`; its query."""
    to_sign, scope, params = _string_to_sign(url, "Amz", "AWS4-HMAC-SHA256")
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    assert hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest() == \
        params["X-Amz-Signature"], "the link's SigV4 signature does not verify"
    return params


def _signed_at(stamp: str) -> datetime:
    return datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


# -- S3 (moto on loopback) -------------------------------------------------------------------


def test_s3_links_download_the_files_without_credentials(moto_server: Server,  # noqa: F811
                                                         tmp_path: Path) -> None:
    store, _ = _s3_store(moto_server)
    run = _tagged(store, tmp_path, "shared-s3")

    links = share(store, ":shared-s3", 3600)
    assert [link.path for link in links] == sorted(FILES)  # one link per file
    for link in links:
        assert _fetch(link.url) == (200, FILES[link.path])
        assert "Signature" in link.url

    # Nothing became public: the object's plain URL is refused.
    plain = links[0].url.split("?", 1)[0]
    assert _fetch(plain)[0] == 403

    # PATH narrows to a folder, or to one file; the run's name works as well as its tag.
    assert [link.path for link in share(store, run, 60, "data/")] == \
        ["data/a b.csv", "data/part/b.bin"]
    [one] = share(store, run, 60, "model.bin")
    assert _fetch(one.url) == (200, FILES["model.bin"])


def test_s3_link_is_signed_with_the_store_key_for_its_expiry(moto_server: Server,  # noqa: F811
                                                            tmp_path: Path) -> None:
    store, _ = _s3_store(moto_server)
    _tagged(store, tmp_path, "signed-s3")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    [link] = share(store, ":signed-s3", 2, "data/a b.csv")
    params = _check_sigv4(link.url, FAKE_AWS["AWS_SECRET_ACCESS_KEY"])
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-Credential"].startswith(FAKE_AWS["AWS_ACCESS_KEY_ID"] + "/")
    assert params["X-Amz-Expires"] == "2"
    with pytest.raises(AssertionError, match="does not verify"):  # the expiry is signed
        _check_sigv4(link.url.replace("X-Amz-Expires=2", "X-Amz-Expires=3"),
                     FAKE_AWS["AWS_SECRET_ACCESS_KEY"])
    signed = _signed_at(params["X-Amz-Date"])
    assert before <= signed <= before + timedelta(seconds=5)
    # The promised expiry is never later than the one the link carries.
    expires_at = datetime.fromisoformat(link.expires_at)
    assert before + timedelta(seconds=2) <= expires_at <= signed + timedelta(seconds=2)


@pytest.mark.xfail(strict=False, reason="moto 5.2.5 does not check the expiry (or the "
                   "signature) of a presigned URL: it serves the object after expiry")
def test_s3_expired_link_is_refused(moto_server: Server, tmp_path: Path) -> None:  # noqa: F811
    store, _ = _s3_store(moto_server)
    _tagged(store, tmp_path, "short-s3")
    [link] = share(store, ":short-s3", 2, "model.bin")
    assert _fetch(link.url)[0] == 200
    time.sleep(3.5)
    assert _fetch(link.url)[0] == 403


def test_s3_refuses_links_longer_than_seven_days(moto_server: Server,  # noqa: F811
                                                 tmp_path: Path) -> None:
    store, _ = _s3_store(moto_server)
    _tagged(store, tmp_path, "long-s3")
    assert len(share(store, ":long-s3", 7 * 86400)) == len(FILES)
    with pytest.raises(UsageError, match="S3 presigned URLs last at most 7 days"):
        share(store, ":long-s3", 7 * 86400 + 1)


def test_unknown_run_tag_or_path_is_an_error(moto_server: Server,  # noqa: F811
                                             tmp_path: Path) -> None:
    store, _ = _s3_store(moto_server)
    run = _tagged(store, tmp_path, "known-s3")
    with pytest.raises(NotFoundError):
        share(store, "no-such-run", 60)
    with pytest.raises(NotFoundError):
        share(store, ":no-such-tag", 60)
    with pytest.raises(NotFoundError, match="no artifact at 'dat'"):
        share(store, run, 60, "dat")  # a prefix of a name is not a folder


def test_cli_prints_links_of_an_s3_profile(moto_server: Server, home: Path,  # noqa: F811
                                           tmp_path: Path) -> None:
    store, url = _s3_store(moto_server)
    _tagged(store, tmp_path, "cli-s3")
    (home / "config.yaml").write_text(yaml.safe_dump({"default": "local", "profiles": {
        "team": {"backend": "aws", "settings": {"region": "us-east-1", "store_url": url}}}}))
    dstack = Dstack(home, tmp_path)

    out = dstack("artifacts", "share", ":cli-s3", "data", "--expires", "90m",
                 "--profile", "team").stdout.splitlines()
    assert len(out) == 3
    for line, rel in zip(out, ["data/a b.csv", "data/part/b.bin"], strict=False):
        path, link = line.split("  ", 1)[0], line.rsplit(" ", 1)[1]
        assert path == rel
        assert _fetch(link) == (200, FILES[rel])
    assert out[2].startswith("the links expire at ") and out[2].endswith(" UTC (in 90m)")

    doc: list[dict[str, Any]] = dstack.json("artifacts", "share", ":cli-s3", "model.bin",
                                            "--profile", "team")
    assert [d["path"] for d in doc] == ["model.bin"]
    assert _fetch(doc[0]["url"]) == (200, FILES["model.bin"])
    expires = datetime.fromisoformat(doc[0]["expires_at"]) - datetime.now(timezone.utc)
    assert timedelta(hours=23, minutes=59) < expires <= timedelta(hours=24)  # the default

    too_long = dstack("artifacts", "share", ":cli-s3", "--expires", "8d", "--profile", "team",
                      expect=2)
    assert "at most 7 days" in too_long.stderr and too_long.stdout == ""
    missing = dstack("artifacts", "share", ":cli-s3", "nope", "--profile", "team", expect=1)
    assert "no artifact at 'nope'" in missing.stderr
    bad = dstack("artifacts", "share", ":cli-s3", "--expires", "soon", "--profile", "team",
                 expect=2)
    assert "--expires 'soon'" in bad.stderr


# -- GCS (fake-gcs-server on loopback) -------------------------------------------------------


def test_gcs_emulator_credentials_cannot_sign(gcs_emulator: Server,  # noqa: F811
                                              tmp_path: Path) -> None:
    store = open_store(f"gs://{gcs_emulator.bucket}/share-{secrets.token_hex(4)}")
    _tagged(store, tmp_path, "emulated")
    with pytest.raises(UsageError) as refused:
        share(store, ":emulated", 60)
    assert "anonymous credentials" in refused.value.message
    assert "STORAGE_EMULATOR_HOST" in refused.value.message


def _key_store(cloud: GcpCloud, bucket: str) -> Store:
    """A store of the emulator's bucket whose client holds the user's service-account key."""
    from google.cloud import storage
    from google.oauth2 import service_account

    from dstack.store.gcs import GCSStore

    assert cloud.key is not None
    creds = service_account.Credentials.from_service_account_file(str(cloud.key))
    client = storage.Client(project=cloud.project, credentials=creds)
    return GCSStore(bucket, f"share-{secrets.token_hex(4)}", client=client)


def _check_goog4(url: str, key_file: Path) -> dict[str, str]:
    """Verify the V4 signature of a signed GET `url` with the key's public half; its query."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    to_sign, _, params = _string_to_sign(url, "Goog", "GOOG4-RSA-SHA256")
    private = serialization.load_pem_private_key(
        json.loads(key_file.read_text())["private_key"].encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    private.public_key().verify(bytes.fromhex(params["X-Goog-Signature"]), to_sign.encode(),
                                padding.PKCS1v15(), hashes.SHA256())  # raises when wrong
    return params


def test_gcs_links_signed_with_a_service_account_key(gcp_cloud: GcpCloud,  # noqa: F811
                                                     gcs_emulator: Server,  # noqa: F811
                                                     tmp_path: Path) -> None:
    from cryptography.exceptions import InvalidSignature

    store = _key_store(gcp_cloud, gcs_emulator.bucket)
    run = _tagged(store, tmp_path, "keyed")
    before = datetime.now(timezone.utc).replace(microsecond=0)
    links = share(store, run, 2)
    assert [link.path for link in links] == sorted(FILES)
    assert gcp_cloud.key is not None
    for link in links:
        assert link.url.startswith(gcs_emulator.url + "/")  # the emulator's host
        params = _check_goog4(link.url, gcp_cloud.key)
        assert params["X-Goog-Credential"].startswith(
            f"dev@{gcp_cloud.project}.iam.gserviceaccount.com/")
        assert params["X-Goog-Expires"] == "2"
        with pytest.raises(InvalidSignature):  # the expiry is signed
            _check_goog4(link.url.replace("X-Goog-Expires=2", "X-Goog-Expires=3"),
                         gcp_cloud.key)
        assert before <= _signed_at(params["X-Goog-Date"]) <= before + timedelta(seconds=5)
        assert _fetch(link.url) == (200, FILES[link.path])  # the emulator serves it
    with pytest.raises(UsageError, match="GCS V4 signed URLs last at most 7 days"):
        share(store, run, 8 * 86400)


@pytest.mark.xfail(strict=False, reason="fake-gcs-server checks no signature (nor expiry): it "
                   "serves every object to anyone")
def test_gcs_tampered_link_is_refused(gcp_cloud: GcpCloud, gcs_emulator: Server,  # noqa: F811
                                      tmp_path: Path) -> None:
    store = _key_store(gcp_cloud, gcs_emulator.bucket)
    run = _tagged(store, tmp_path, "tampered")
    [link] = share(store, run, 60, "model.bin")
    assert _fetch(link.url.replace("X-Goog-Signature=", "X-Goog-Signature=00"))[0] == 403


# -- the local backend -----------------------------------------------------------------------


def test_local_backend_refuses_through_the_cli(home: Path, tmp_path: Path) -> None:
    proc = Dstack(home, tmp_path)("artifacts", "share", "some-run", "--expires", "1h",
                                  expect=2)
    assert "files on this machine" in proc.stderr
    assert "no link to sign" in proc.stderr
    assert "dstack artifacts download" in proc.stderr  # what to do
    assert proc.stdout == ""

"""One contract for every store: the local folder, S3 (a real moto server on loopback) and
GCS (a real fake-gcs-server on loopback). Each test gets a fresh prefix of the bucket."""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dstack.errors import NotFoundError, StoreError, UsageError
from dstack.store.base import JsonDoc, Store, open_store
from dstack.store.local import LocalStore

from .servers import (  # noqa: F401  (fixtures)
    Server,
    env_patch,
    gcs_emulator,
    isolated_aws_env,
    moto_server,
)

MiB = 1024 * 1024
THREADS = 20


@dataclass
class Case:
    """A store under test, and how to damage one of its objects behind its back."""

    name: str
    store: Store
    corrupt: Callable[[str], None] | None
    server: Server | None = None


def _flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def _s3_case(server: Server) -> Case:
    import boto3

    prefix = f"t-{secrets.token_hex(4)}"
    store = open_store(f"s3://{server.bucket}/{prefix}?endpoint_url={server.url}")
    raw: Any = boto3.client("s3", endpoint_url=server.url)

    def corrupt(key: str) -> None:
        """Rewrite the body with one byte flipped, keeping the metadata (and its SHA-256)."""
        full = f"{prefix}/{key}"
        obj = raw.get_object(Bucket=server.bucket, Key=full)
        body = bytearray(obj["Body"].read())
        body[len(body) // 2] ^= 0xFF
        raw.put_object(Bucket=server.bucket, Key=full, Body=bytes(body),
                       Metadata=obj["Metadata"])

    return Case("s3", store, corrupt, server)


def _gcs_case(server: Server) -> Case:
    prefix = f"t-{secrets.token_hex(4)}"
    store = open_store(f"gs://{server.bucket}/{prefix}")
    assert server.data_root is not None
    root = server.data_root / server.bucket / prefix

    def corrupt(key: str) -> None:
        """Flip a byte of the body in the emulator's files; its CRC32C stays the old one."""
        _flip_a_byte(root / key)

    return Case("gcs", store, corrupt, server)


@pytest.fixture(params=["local", "s3", "gcs"])
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Case:
    """A fresh, empty store of each kind."""
    if request.param == "s3":
        return _s3_case(request.getfixturevalue("moto_server"))
    if request.param == "gcs":
        return _gcs_case(request.getfixturevalue("gcs_emulator"))
    return Case("local", open_store(f"file://{tmp_path / 'store'}"), None)


@pytest.fixture
def s3_server(request: pytest.FixtureRequest) -> Server:
    """The session's moto server."""
    server: Server = request.getfixturevalue("moto_server")
    return server


@pytest.fixture
def store(case: Case) -> Store:
    return case.store


def _in_threads(n: int, fn: Callable[[int], Any]) -> list[Any]:
    """Run fn(0..n-1) in n threads released together."""
    barrier = threading.Barrier(n)

    def call(i: int) -> Any:
        barrier.wait()
        return fn(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(call, range(n)))


# -- round trips ---------------------------------------------------------------------------


def test_bytes_round_trip_and_overwrite(store: Store) -> None:
    payload = bytes(range(256)) * 3
    store.put_bytes("runs/r1/logs/00000000.log", payload)
    assert store.get_bytes("runs/r1/logs/00000000.log") == payload
    assert store.size("runs/r1/logs/00000000.log") == len(payload)
    assert store.exists("runs/r1/logs/00000000.log")
    store.put_bytes("runs/r1/logs/00000000.log", b"")
    assert store.get_bytes("runs/r1/logs/00000000.log") == b""
    assert store.size("runs/r1/logs/00000000.log") == 0


def test_file_round_trip(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    store.put_file("runs/r1/artifacts/model/weights.bin", src)
    dest = tmp_path / "out" / "deep" / "weights.bin"
    store.get_file("runs/r1/artifacts/model/weights.bin", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["weights.bin"]  # no .part left
    assert store.get_bytes("runs/r1/artifacts/model/weights.bin") == src.read_bytes()


def test_json_round_trip(store: Store) -> None:
    doc: JsonDoc = {"name": "r1", "status": "running", "nested": {"gpu": 2, "tags": ["a"]}}
    store.put_json("runs/r1/run.json", doc)
    assert store.get_json("runs/r1/run.json") == doc
    assert store.create_json("tags/best.json", {"run": "r1"}) is True
    assert store.create_json("tags/best.json", {"run": "r2"}) is False
    assert store.get_json("tags/best.json") == {"run": "r1"}
    store.put_bytes("runs/r1/bad.json", b"[1, 2]")
    with pytest.raises(StoreError, match="not a JSON object"):
        store.get_json("runs/r1/bad.json")


def test_url_reopens_the_same_store(store: Store) -> None:
    """The runner gets `store.url` and opens it again: it must see the same objects."""
    store.put_bytes("code/abc.tar.gz", b"archive")
    again = open_store(store.url)
    assert type(again) is type(store)
    assert again.get_bytes("code/abc.tar.gz") == b"archive"


def test_missing_keys(store: Store, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        store.get_bytes("runs/nope/run.json")
    with pytest.raises(NotFoundError):
        store.get_json("runs/nope/run.json")
    with pytest.raises(NotFoundError):
        store.size("runs/nope/run.json")
    dest = tmp_path / "dl" / "x"
    with pytest.raises(NotFoundError):
        store.get_file("runs/nope/artifacts/x", dest)
    assert not dest.exists()
    assert not dest.parent.exists() or not any(dest.parent.iterdir())
    assert store.exists("runs/nope/run.json") is False
    store.delete("runs/nope/run.json")  # deleting nothing is fine
    assert store.list("runs/nope/") == []
    assert store.list_dirs("runs/") == []


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/../b", "a/./b", "a/", "a\0b"])
def test_invalid_keys_refused(store: Store, key: str, tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    for op in (lambda: store.put_bytes(key, b"x"), lambda: store.get_bytes(key),
               lambda: store.create_bytes(key, b"x"), lambda: store.put_file(key, src),
               lambda: store.update_json(key, lambda d: {"a": 1})):
        with pytest.raises(StoreError, match="invalid store key"):
            op()
    assert store.list("") == []


# -- listing ---------------------------------------------------------------------------------


def test_list_and_list_dirs(store: Store) -> None:
    for key in ["runs/a/run.json", "runs/a/logs/00000000.log", "runs/b/run.json",
                "runs/b/artifacts/data/x.csv", "tags/t1.json", "code/h.tar.gz"]:
        store.put_bytes(key, b"{}")
    assert store.list("runs/a/") == ["runs/a/logs/00000000.log", "runs/a/run.json"]
    assert store.list("runs/a") == store.list("runs/a/")
    assert store.list("runs/b/artifacts/") == ["runs/b/artifacts/data/x.csv"]
    assert len(store.list("")) == 6
    assert store.list_dirs("runs/") == ["a", "b"]
    assert store.list_dirs("runs/a/") == ["logs", "run.json"]
    assert store.list_dirs("") == ["code", "runs", "tags"]
    assert store.list("run") == []  # a prefix is a folder, not the start of a name


def test_list_times_say_when_each_object_was_written(store: Store) -> None:
    """What `dstack gc` reads to leave archives of runs being submitted alone."""
    before = time.time()
    for key in ["code/a.tar.gz", "code/sub/b.tar.gz", "runs/x/run.json"]:
        store.put_bytes(key, b"{}")
    times = store.list_times("code/")
    assert set(times) == {"code/a.tar.gz", "code/sub/b.tar.gz"}
    assert all(before - 5 <= t <= time.time() + 5 for t in times.values()), times
    assert store.list_times("nothing/") == {}


def test_many_keys_pages_and_delete_prefix(store: Store) -> None:
    """More than 1000 keys: S3 and GCS answer listings in pages of at most 1000."""
    n = 1100
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.put_bytes(f"many/d{i:04d}/f", b"x"), range(n)))
    store.put_bytes("keep/me", b"k")
    keys = store.list("many/")
    assert keys == [f"many/d{i:04d}/f" for i in range(n)]
    assert store.list_dirs("many/") == [f"d{i:04d}" for i in range(n)]
    store.delete_prefix("many/")
    assert store.list("many/") == []
    assert store.list("") == ["keep/me"]


def test_delete_and_delete_prefix(store: Store) -> None:
    for key in ["runs/a/run.json", "runs/a/artifacts/x", "runs/ab/run.json"]:
        store.put_bytes(key, b"1")
    store.delete("runs/ab/run.json")
    assert not store.exists("runs/ab/run.json")
    store.put_bytes("runs/ab/run.json", b"1")
    store.delete_prefix("runs/a/")
    assert store.list("runs/") == ["runs/ab/run.json"]  # a sibling with a longer name stays


# -- atomicity -------------------------------------------------------------------------------


def test_create_race_has_one_winner(store: Store) -> None:
    results = _in_threads(THREADS, lambda i: store.create_bytes("runs/claimed/run.json",
                                                                f"{i}".encode()))
    assert results.count(True) == 1
    assert store.get_bytes("runs/claimed/run.json") == str(results.index(True)).encode()


def test_update_json_loses_no_update(store: Store) -> None:
    store.put_json("runs/r/run.json", {"n": 0, "seen": []})

    def increment(i: int) -> JsonDoc:
        return store.update_json("runs/r/run.json",
                                 lambda d: {**d, "n": d["n"] + 1, "seen": [*d["seen"], i]})

    _in_threads(THREADS, increment)
    doc = store.get_json("runs/r/run.json")
    assert doc["n"] == THREADS
    assert sorted(doc["seen"]) == list(range(THREADS))


def test_update_json_absent_and_no_change(store: Store) -> None:
    seen: list[JsonDoc] = []

    def record(doc: JsonDoc) -> None:
        seen.append(doc)

    assert store.update_json("runs/x/run.json", record) == {}
    assert seen == [{}]
    assert not store.exists("runs/x/run.json")
    assert store.update_json("runs/x/run.json", lambda d: {"v": 1}) == {"v": 1}
    assert store.update_json("runs/x/run.json", lambda d: None) == {"v": 1}
    assert store.get_json("runs/x/run.json") == {"v": 1}


def test_concurrent_creates_and_updates_of_a_new_document(store: Store) -> None:
    """update_json on an absent key must not let two writers both create it."""
    _in_threads(THREADS, lambda i: store.update_json(
        "runs/new/run.json", lambda d: {"n": d.get("n", 0) + 1}))
    assert store.get_json("runs/new/run.json") == {"n": THREADS}


# -- large files and integrity -------------------------------------------------------------


def _big_file(path: Path, size: int = 64 * MiB) -> str:
    data = os.urandom(size)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def test_large_file_round_trip(case: Case, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "big.bin"
    digest = _big_file(src)
    resumable: list[int] = []
    if case.name == "gcs":
        from google.cloud.storage.blob import Blob

        real = Blob._do_resumable_upload

        def spy(self: Blob, *args: Any, **kwargs: Any) -> Any:
            resumable.append(self.chunk_size or 0)
            return real(self, *args, **kwargs)

        monkeypatch.setattr(Blob, "_do_resumable_upload", spy)
    case.store.put_file("runs/r/artifacts/big.bin", src)
    assert case.store.size("runs/r/artifacts/big.bin") == 64 * MiB
    if case.name == "s3":
        assert case.server is not None
        head = _raw_head(case)
        assert head["ETag"].strip('"').endswith("-4"), head["ETag"]  # 4 parts of 16 MiB
        assert head["Metadata"]["dstack-sha256"] == digest
    if case.name == "gcs":
        assert resumable == [16 * MiB]  # one chunked resumable upload
    dest = tmp_path / "dl" / "big.bin"
    case.store.get_file("runs/r/artifacts/big.bin", dest)
    assert hashlib.sha256(dest.read_bytes()).hexdigest() == digest


def _raw_head(case: Case) -> dict[str, Any]:
    import boto3

    from dstack.store.s3 import S3Store

    assert isinstance(case.store, S3Store) and case.server is not None
    raw: Any = boto3.client("s3", endpoint_url=case.server.url)
    head: dict[str, Any] = raw.head_object(Bucket=case.server.bucket,
                                           Key=case.store.prefix + "runs/r/artifacts/big.bin")
    return head


@pytest.mark.parametrize("size", [1000, 20 * MiB], ids=["small", "multipart"])
def test_corrupted_object_is_refused(case: Case, tmp_path: Path, size: int) -> None:
    if case.corrupt is None:
        pytest.skip(f"the {case.name} store keeps no checksums")
    src = tmp_path / "obj.bin"
    src.write_bytes(os.urandom(size))
    case.store.put_file("runs/r/artifacts/obj.bin", src)
    case.corrupt("runs/r/artifacts/obj.bin")
    dest = tmp_path / "dl" / "obj.bin"
    dest.parent.mkdir()
    with pytest.raises(StoreError, match="checksum mismatch"):
        case.store.get_file("runs/r/artifacts/obj.bin", dest)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a partial download
    with pytest.raises(StoreError, match="checksum mismatch"):
        case.store.get_bytes("runs/r/artifacts/obj.bin")


def test_download_replaces_an_existing_file_only_when_whole(case: Case, tmp_path: Path) -> None:
    dest = tmp_path / "model.bin"
    dest.write_bytes(b"old")
    case.store.put_bytes("runs/r/artifacts/model.bin", b"new")
    case.store.get_file("runs/r/artifacts/model.bin", dest)
    assert dest.read_bytes() == b"new"
    if case.corrupt is not None:
        case.corrupt("runs/r/artifacts/model.bin")
        with pytest.raises(StoreError):
            case.store.get_file("runs/r/artifacts/model.bin", dest)
        assert dest.read_bytes() == b"new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin"]


# -- errors that name what to do -----------------------------------------------------------


def test_missing_bucket_is_a_store_error(case: Case) -> None:
    if case.server is None:
        pytest.skip("a folder store has no bucket")
    scheme = "s3" if case.name == "s3" else "gs"
    query = f"?endpoint_url={case.server.url}" if case.name == "s3" else ""
    store = open_store(f"{scheme}://no-such-bucket-{secrets.token_hex(3)}/p{query}")
    with pytest.raises(StoreError, match="no-such-bucket") as err:
        store.put_bytes("runs/r/run.json", b"{}")
    assert not isinstance(err.value, NotFoundError)


def test_unknown_aws_profile_says_how_to_fix(s3_server: Server, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in isolated_aws_env(tmp_path).items():
        monkeypatch.setenv(name, value)
    with pytest.raises(StoreError) as err:
        open_store(f"s3://{s3_server.bucket}/p?profile=nosuchprofile")
    assert "nosuchprofile" in err.value.message
    assert err.value.hint and "aws configure --profile nosuchprofile" in err.value.hint


def test_no_aws_credentials_says_which_profile(s3_server: Server, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = open_store(f"s3://{s3_server.bucket}/p?endpoint_url={s3_server.url}")
    with pytest.raises(StoreError, match="no AWS credentials") as err:
        store.get_bytes("runs/r/run.json")
    assert err.value.hint and "'default'" in err.value.hint


def test_bad_store_urls() -> None:
    with pytest.raises(UsageError):
        open_store("s3:///no-bucket")
    with pytest.raises(UsageError):
        open_store("s3://b/p?endpoint=http://x")
    with pytest.raises(UsageError):
        open_store("gs://b/p?region=x")
    with pytest.raises(UsageError, match="unsupported"):
        open_store("azure://b/p")
    assert isinstance(open_store("file:///tmp/x"), LocalStore)


# -- S3 specifics ----------------------------------------------------------------------------


class _Raw:
    """The raw body of a canned botocore response."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Any:
        yield self.body


def test_s3_without_conditional_writes_falls_back(s3_server: Server,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A server that answers 501 to If-None-Match/If-Match gets check-then-put (documented as
    not atomic), with a warning, instead of failing every run."""
    from botocore.awsrequest import AWSResponse

    from dstack.store.s3 import S3Store

    store = open_store(f"s3://{s3_server.bucket}/t-{secrets.token_hex(4)}"
                       f"?endpoint_url={s3_server.url}")
    assert isinstance(store, S3Store)
    refused: list[str] = []

    def no_conditions(request: Any, **_: Any) -> AWSResponse | None:
        if "If-None-Match" in request.headers or "If-Match" in request.headers:
            refused.append(request.method)
            body = (b"<Error><Code>NotImplemented</Code><Message>A header you provided "
                    b"implies functionality that is not implemented</Message></Error>")
            return AWSResponse(request.url, 501, {}, _Raw(body))
        return None

    store.client.meta.events.register("before-send.s3.PutObject", no_conditions)
    assert store.create_bytes("tags/t.json", b"1") is True
    assert store.create_bytes("tags/t.json", b"2") is False
    assert store.get_bytes("tags/t.json") == b"1"
    assert store.update_json("runs/r/run.json", lambda d: {"n": d.get("n", 0) + 1}) == {"n": 1}
    assert store.update_json("runs/r/run.json", lambda d: {"n": d["n"] + 1}) == {"n": 2}
    assert refused == ["PUT"]  # asked once, then remembered
    assert "not atomic" in caplog.text


def test_s3_url_options(s3_server: Server, tmp_path: Path,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """endpoint_url from the environment, region from the URL, credentials from a profile."""
    from dstack.store.s3 import ENDPOINT_ENV, S3Store

    env = isolated_aws_env(tmp_path)
    Path(env["AWS_CONFIG_FILE"]).write_text("[profile dev]\nregion = eu-west-1\n")
    Path(env["AWS_SHARED_CREDENTIALS_FILE"]).write_text(
        "[dev]\naws_access_key_id = devkey\naws_secret_access_key = devsecret\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)
    monkeypatch.setenv(ENDPOINT_ENV, s3_server.url)

    store = open_store(f"s3://{s3_server.bucket}/p-{secrets.token_hex(4)}?profile=dev")
    assert isinstance(store, S3Store)
    assert store.client.meta.region_name == "eu-west-1"  # from the profile's config
    assert store.client._request_signer._credentials.access_key == "devkey"
    assert f"endpoint_url={s3_server.url}".replace(":", "%3A").replace("/", "%2F") in store.url
    store.put_bytes("a/b", b"via profile")
    monkeypatch.delenv(ENDPOINT_ENV)
    again = open_store(store.url)  # what the runner does: the URL carries everything
    assert again.get_bytes("a/b") == b"via profile"
    other = open_store(f"s3://{s3_server.bucket}/p?region=us-west-2&profile=dev"
                       f"&endpoint_url={s3_server.url}")
    assert isinstance(other, S3Store)
    assert other.client.meta.region_name == "us-west-2"

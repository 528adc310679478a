"""Real storage servers on loopback for the store tests, one process each per test session.

- S3: moto's `moto_server` (from moto[server]) on a port it picks (`-p 0`), read back from
  its banner; a bucket is created through boto3 with fake credentials in the environment.
- GCS: fake-gcs-server, built by `scripts/gcs-emulator.sh install` (`make setup` runs it),
  started by the same script on a free port with a filesystem backend, so a test can
  corrupt an object's body on disk behind the server's back.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
GCS_SCRIPT = ROOT / "scripts" / "gcs-emulator.sh"
BUCKET = "dstack-test"
START_TIMEOUT = 30.0
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass
class Server:
    """A server process on 127.0.0.1 and what the tests need to reach it."""

    url: str
    proc: subprocess.Popen[bytes]
    bucket: str
    log: Path
    data_root: Path | None = None
    """Where the server keeps object bodies on disk (GCS emulator only)."""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _fail(what: str, log: Path) -> None:
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    pytest.fail(f"{what}\n--- server log ---\n{tail}", pytrace=False)


def isolated_aws_env(tmp: Path) -> dict[str, str]:
    """Fake credentials and empty AWS config files, so no user profile is ever read."""
    return {**FAKE_AWS, "AWS_CONFIG_FILE": str(tmp / "aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-credentials")}


def start_moto(log: Path, tls: tuple[Path, Path] | None = None, host: str = "127.0.0.1"
               ) -> tuple[str, subprocess.Popen[bytes]]:
    """A moto server (every AWS service) on a port it picks of `host` (loopback unless a
    test's pods must reach it), over HTTPS with `tls` (certificate, key) when given; (its
    URL, process)."""
    exe = Path(sys.executable).with_name("moto_server")
    extra = ["-s", "-c", str(tls[0]), "-k", str(tls[1])] if tls else []
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-H", host, "-p", "0", *extra], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        found = re.search(rf"Running on (https?://{re.escape(host)}:\d+)", log.read_text())
        if found:
            return found.group(1), proc
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            _fail("moto_server did not start", log)
        time.sleep(0.05)


@pytest.fixture(scope="session")
def env_patch() -> Iterator[pytest.MonkeyPatch]:
    """A session-wide MonkeyPatch for the servers' environment variables."""
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory,
                env_patch: pytest.MonkeyPatch) -> Iterator[Server]:
    """moto's S3 server on loopback with the bucket BUCKET."""
    import boto3

    tmp = tmp_path_factory.mktemp("moto")
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "DSTACK_S3_ENDPOINT_URL"):
        env_patch.delenv(name, raising=False)
    for name, value in isolated_aws_env(tmp).items():
        env_patch.setenv(name, value)
    env_patch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe a cloud's metadata
    log = tmp / "moto.log"
    url, proc = start_moto(log)
    try:
        client: Any = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield Server(url=url, proc=proc, bucket=BUCKET, log=log)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory,
                 env_patch: pytest.MonkeyPatch) -> Iterator[Server]:
    """fake-gcs-server on loopback with the bucket BUCKET; STORAGE_EMULATOR_HOST points at it."""
    from google.cloud import storage

    binary = Path(subprocess.run(["bash", str(GCS_SCRIPT), "path"], check=True,
                                 capture_output=True, text=True).stdout.strip())
    if not os.access(binary, os.X_OK):
        pytest.fail(f"the GCS emulator is not built at {binary}: run "
                    f"`bash scripts/gcs-emulator.sh install` (`make setup` does)", pytrace=False)
    tmp = tmp_path_factory.mktemp("gcs")
    log = tmp / "gcs.log"
    data_root = tmp / "data"
    for _attempt in range(5):  # a free port can be taken before the server binds it
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            proc = subprocess.Popen(["bash", str(GCS_SCRIPT), "start", str(port), str(data_root)],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        try:
            if _answers(f"{url}/storage/v1/b", proc):
                break
        except BaseException:
            _stop(proc)
            raise
        _stop(proc)
    else:
        _fail("fake-gcs-server did not start", log)
    try:
        env_patch.setenv("STORAGE_EMULATOR_HOST", url)
        env_patch.setenv("NO_GCE_CHECK", "True")  # never probe a cloud's metadata server
        storage.Client(project="dstack-test").create_bucket(BUCKET)
        yield Server(url=url, proc=proc, bucket=BUCKET, log=log, data_root=data_root)
    finally:
        _stop(proc)


def _answers(url: str, proc: subprocess.Popen[bytes]) -> bool:
    """Whether the server at `url` answers before its process exits or the time is up."""
    deadline = time.monotonic() + START_TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            time.sleep(0.05)
    return False

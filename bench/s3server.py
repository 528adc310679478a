"""An S3-compatible server on loopback for the artifact benchmark: moto's `moto_server`,
started as tests/integration/servers.py does (port picked by the server, read back from its
banner), with fake credentials and empty AWS config files so no user profile is read.

moto keeps small objects in memory and spills larger ones to temp files; its peak memory
(`VmHWM`) is reported so the reader can judge what the server itself cost.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from bench.command import BenchError, vm_hwm_kib

BUCKET = "dstack-bench"
START_TIMEOUT_S = 30.0
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_CLEARED = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "DSTACK_S3_ENDPOINT_URL")


@contextlib.contextmanager
def fake_aws_env(tmp: Path) -> Iterator[dict[str, str]]:
    """Set fake AWS credentials (and empty config files) in this process; restore after."""
    values = {**FAKE_AWS, "AWS_CONFIG_FILE": str(tmp / "aws-config"),
              "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "aws-credentials")}
    saved = {k: os.environ.get(k) for k in (*values, *_CLEARED)}
    try:
        for k in _CLEARED:
            os.environ.pop(k, None)
        os.environ.update(values)
        yield values
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class MotoServer:
    """`moto_server` on 127.0.0.1 with the bucket BUCKET; stopped on exit."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.log = tmp / "moto.log"
        self.url = ""
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> MotoServer:
        exe = Path(sys.executable).with_name("moto_server")
        if not exe.exists():
            raise BenchError(f"{exe} is missing: install the test extras (`make setup`)")
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", "0"], stdout=out,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env={**os.environ,
                                                                      **FAKE_AWS})
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while not self.url:
                found = re.search(r"Running on (http://127\.0\.0\.1:\d+)", self.log.read_text())
                if found:
                    self.url = found.group(1)
                elif self.proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("moto_server did not start: " +
                                     self.log.read_text(errors="replace")[-1000:])
                else:
                    time.sleep(0.05)
            self.client().create_bucket(Bucket=BUCKET)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def client(self, max_pool: int = 10) -> Any:
        """A boto3 S3 client for this server (path-style, like the store's)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            config=Config(max_pool_connections=max_pool,
                                          retries={"mode": "standard", "max_attempts": 5},
                                          s3={"addressing_style": "path"}))

    def peak_rss_mib(self) -> float | None:
        """The server's peak resident memory so far."""
        kib = vm_hwm_kib(self.proc.pid) if self.proc else None
        return kib / 1024 if kib is not None else None

    def empty_bucket(self) -> None:
        """Delete every object (so the server frees what it holds)."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                client.delete_objects(Bucket=BUCKET,
                                      Delete={"Objects": keys[i:i + 1000], "Quiet": True})

    def stop(self) -> None:
        """Terminate the server (SIGKILL to its group if it does not stop in 10 s)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

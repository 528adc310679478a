"""Stand-in clouds for end-to-end tests of `dstack ... --profile aws|gcp` through the CLI.

A test gets a cloud of its own: a fresh moto server (every AWS API) or the GCS emulator and a
compute document, a world folder where the stand-in plugins keep instances and images, and
a `dstack` whose environment points the engine at the stand-in plugins (`tests/standins/bin`
first on PATH), boto3 at moto, and the instances' boot scripts at the same endpoints. The
user's side is what a new user has: a named AWS profile in their own AWS files, no
credentials in the environment.

Images. `bare`: an empty /opt, so an instance installs Python's venv, the runner's
requirements (`dstack.runner.requirements`) from the package registry and the dstack wheel
without its dependencies, exactly as on a fresh cloud image. `baked`: a folder whose /opt
already holds `/opt/dstack/venv` with the wheel's dependencies (built once and kept in the
user's cache), like a custom image a team bakes; the boot script is the same, and pip then
finds the requirements there and installs only the dstack wheel itself. Tests use `baked`
unless they test the first boot itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import Dstack, poll
from tests.integration.servers import ROOT, _stop, start_moto
from tests.standins import instance

STANDIN_BIN = ROOT / "tests" / "standins" / "bin"
IMAGE_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "dstack" / \
    "standin-images"
CALLER = "127.0.0.1/32"
"""The caller's address as the tests give it: app ports open to it only."""
USER_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE")


# -- the dstack wheel and the baked image (once per test session) -----------------------------


@pytest.fixture(scope="session")
def dstack_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's wheel, built once per session (what DSTACK_WHEEL points runs at)."""
    from dstack.stacks.wheel import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel")).path


def _image_key() -> str:
    return hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]


@pytest.fixture(scope="session")
def baked_image(dstack_wheel: Path) -> Path:
    """A folder whose content is an instance's /opt with `/opt/dstack/venv` holding the
    wheel's dependencies (not dstack itself); built in a namespace where it *is* /opt, so
    the venv's paths are right. Kept per pyproject.toml in the user's cache."""
    image = IMAGE_CACHE / _image_key()
    if (image / "dstack" / "venv" / ".baked").exists():
        return image
    building = image.with_name(image.name + f".{os.getpid()}.tmp")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    venv = "/opt/dstack/venv"
    script = " && ".join([
        f"mount --bind {building} /opt", f"mkdir -p /opt/dstack && python3 -m venv {venv}",
        f"{venv}/bin/pip install -q --upgrade pip", f"{venv}/bin/pip install -q boto3 "
        f"google-cloud-storage {dstack_wheel}", f"{venv}/bin/pip uninstall -y -q dstack",
        f"touch {venv}/.baked"])
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script], capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        pytest.fail(f"building the baked image failed:\n{proc.stderr[-3000:]}")
    shutil.rmtree(image, ignore_errors=True)
    os.replace(building, image)
    return image


# -- one cloud per test --------------------------------------------------------------------------


@dataclass
class Cloud:
    """A stand-in cloud: its endpoints, world folder, and what a dstack there needs."""

    name: str
    world: Path
    env: dict[str, str]
    endpoint: str

    def instances(self) -> dict[str, str]:
        """Instance id → state (`running`, `terminated`) of every instance ever launched."""
        folder = self.world / "instances"
        if not folder.is_dir():
            return {}
        return {p.name.split("-", 1)[1]: instance.state(self.name, p.name.split("-", 1)[1])
                for p in folder.iterdir() if p.name.startswith(f"{self.name}-")}

    def running(self) -> list[str]:
        """Ids of instances whose process tree still runs."""
        return [i for i, state in self.instances().items() if state == "running"]

    def image(self, folder: Path, name: str) -> None:
        """Make `folder` the content of image `name` (its /opt)."""
        images = self.world / "images"
        images.mkdir(parents=True, exist_ok=True)
        link = images / name
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        link.symlink_to(folder)

    bucket: str = ""
    """The profile's bucket, once the test knows it."""

    def read(self, key: str) -> bytes:
        """An object of the profile's bucket."""
        raise NotImplementedError

    def end_all(self) -> list[str]:
        """Terminate every instance still running; their ids."""
        left = self.running()
        for found in left:
            instance.terminate(self.name, found)
        return left


@dataclass
class AwsCloud(Cloud):
    """moto as AWS."""

    def client(self, service: str) -> Any:
        """A boto3 client of moto with the tests' own credentials."""
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            verify=self.env["AWS_CA_BUNDLE"])

    def ec2_instances(self, *states: str) -> list[dict[str, Any]]:
        """moto's EC2 instances (in these states, when given)."""
        found = self.client("ec2").describe_instances()
        return [i for r in found["Reservations"] for i in r["Instances"]
                if not states or i["State"]["Name"] in states]

    def dstack_groups(self) -> list[dict[str, Any]]:
        """Security groups dstack created (tagged with a run)."""
        groups = self.client("ec2").describe_security_groups()["SecurityGroups"]
        return [g for g in groups if any(t["Key"] == "dstack:run" for t in g.get("Tags", []))]

    def buckets(self) -> list[str]:
        """Names of the buckets in moto."""
        return [b["Name"] for b in self.client("s3").list_buckets()["Buckets"]]

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Keys in a bucket under `prefix`."""
        found = self.client("s3").list_objects_v2(Bucket=bucket, Prefix=prefix)
        return [o["Key"] for o in found.get("Contents", [])]

    def read(self, key: str) -> bytes:
        """An object of the profile's bucket."""
        body = self.client("s3").get_object(Bucket=self.bucket, Key=key)["Body"]
        return bytes(body.read())

    def register_image(self, folder: Path, name: str = "dstack-baked") -> str:
        """An AMI in moto whose disk is `folder`; its id."""
        ami = self.client("ec2").register_image(Name=name, RootDeviceName="/dev/sda1",
                                 Architecture="x86_64")["ImageId"]
        self.image(folder, ami)
        return str(ami)


def _user_aws_files(tmp: Path, profile: str) -> dict[str, str]:
    """A new user's own AWS config and credentials files with one named profile."""
    (tmp / "aws").mkdir(parents=True, exist_ok=True)
    creds, config = tmp / "aws" / "credentials", tmp / "aws" / "config"
    creds.write_text(f"[{profile}]\naws_access_key_id = AKIAUSERKEY00000000\n"
                     "aws_secret_access_key = user-secret-key-value\n")
    config.write_text(f"[profile {profile}]\nregion = us-east-1\n")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(config)}


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: moto serves HTTPS with it, as
    AWS does, so the workspace bucket's TLS-only policy is obeyed, not bypassed."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stand-in aws")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.TraditionalOpenSSL,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def aws_cloud(tmp_path: Path, tls_cert: tuple[Path, Path],
              monkeypatch: pytest.MonkeyPatch) -> Iterator[AwsCloud]:
    """A fresh moto (over HTTPS) and world for one test; afterwards no instance of it may
    still run."""
    url, proc = start_moto(tmp_path / "moto.log", tls_cert)
    world = tmp_path / "world"
    world.mkdir()
    monkeypatch.setenv(instance.WORLD_ENV, str(world))  # for this process's look at it
    env = {**_user_aws_files(tmp_path, "ci"), "AWS_ENDPOINT_URL": url,
           "DSTACK_S3_ENDPOINT_URL": url, "AWS_CA_BUNDLE": str(tls_cert[0]),
           instance.WORLD_ENV: str(world), "DSTACK_CALLER_CIDR": CALLER}
    cloud = AwsCloud(name="aws", world=world, env=env, endpoint=url)
    try:
        yield cloud
        left = cloud.end_all()
        assert not left, f"instances still running after the test: {left}"
    finally:
        cloud.end_all()
        _stop(proc)


@dataclass
class GcpCloud(Cloud):
    """The GCS emulator and the stand-in's compute document as GCP."""

    project: str = ""
    key: Path | None = None
    """The user's service-account key file."""

    def storage(self) -> Any:
        """A client of the emulator."""
        from google.cloud import storage

        return storage.Client(project=self.project)

    def buckets(self) -> list[str]:
        """Names of the project's buckets in the emulator."""
        return [b.name for b in self.storage().list_buckets() if self.project in b.name]

    def read(self, key: str) -> bytes:
        """An object of the profile's bucket."""
        return bytes(self.storage().bucket(self.bucket).blob(key).download_as_bytes())

    def keys(self, prefix: str) -> list[str]:
        """Keys of the profile's bucket under `prefix` ([] before it exists)."""
        if self.bucket not in self.buckets():
            return []
        return [b.name for b in self.storage().list_blobs(self.bucket, prefix=prefix)]

    def document(self, section: str) -> list[dict[str, Any]]:
        """The objects of one section (`instances`, `firewalls`, ...) of the project's
        compute document."""
        from tests.standins import gcp

        if not gcp.document_path(self.project).exists():
            return []
        return list(gcp.load(self.project)[section].values())


def _token_server() -> tuple[str, Any]:
    """An OAuth token endpoint on loopback: a service-account key's `token_uri`, so the
    credentials check really exchanges a signed assertion for a token."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body = json.dumps({"access_token": "ya29.stand-in", "expires_in": 3600,
                               "token_type": "Bearer"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}/token", server


def service_account_key(path: Path, project: str, token_uri: str) -> Path:
    """A new user's service-account key file (a real RSA key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    path.write_text(json.dumps({
        "type": "service_account", "project_id": project, "private_key_id": "1",
        "private_key": pem, "client_email": f"dev@{project}.iam.gserviceaccount.com",
        "client_id": "1", "token_uri": token_uri}))
    return path


@pytest.fixture
def gcp_cloud(tmp_path: Path, gcs_emulator: Any,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[GcpCloud]:
    """The session's GCS emulator with a project of the test's own, a fresh world and compute
    document, and the user's key file; afterwards no VM of it may still run."""
    import secrets

    world = tmp_path / "world"
    world.mkdir()
    monkeypatch.setenv(instance.WORLD_ENV, str(world))
    project = f"proj-{secrets.token_hex(4)}"
    token_uri, server = _token_server()
    key = service_account_key(tmp_path / "key.json", project, token_uri)
    env = {"STORAGE_EMULATOR_HOST": gcs_emulator.url, instance.WORLD_ENV: str(world),
           "DSTACK_CALLER_CIDR": CALLER}
    cloud = GcpCloud(name="gcp", world=world, env=env, endpoint=gcs_emulator.url,
                     project=project, key=key)
    try:
        yield cloud
        left = cloud.end_all()
        assert not left, f"VMs still running after the test: {left}"
    finally:
        cloud.end_all()
        server.shutdown()


class CloudDstack(Dstack):
    """`dstack` as a user of a stand-in cloud runs it: the stand-in plugins first on PATH,
    the cloud's endpoints, and no AWS credentials in the environment."""

    def __init__(self, home: Path, project: Path, cloud: Cloud,
                 extra: dict[str, str] | None = None) -> None:
        super().__init__(home, project)
        self.cloud = cloud
        self.extra = extra or {}

    def record(self, run: str) -> dict[str, Any]:
        """The run's document, read from the cloud's bucket (without the CLI)."""
        return json.loads(self.cloud.read(f"runs/{run}/run.json"))

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in super().env().items() if k not in USER_AWS}
        env.pop("AWS_EC2_METADATA_DISABLED", None)
        env.update(self.cloud.env)
        env.update(self.extra)
        env["PATH"] = f"{STANDIN_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env


def wait_for(what: str, check: Any, timeout: float) -> Any:
    """`poll` with a slower beat, for cloud round trips."""
    return poll(what, check, timeout, every=0.5)


def run_output(out: Path, err: Path) -> str:
    """What a background `dstack` printed so far (stdout then stderr)."""
    return out.read_text(errors="replace") + err.read_text(errors="replace")


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """The exit code of a background `dstack`, killed (and failed) after `timeout`."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"dstack did not exit within {timeout}s")

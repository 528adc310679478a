"""A stand-in cloud instance: the exact user-data (or startup script) of a VM, run as a local
process tree, as the stand-in aws and gcp plugins create instances.

`launch` starts a supervisor process, detached from the plugin (plugins live only as long as
one engine call), that gives the instance:

- a disk: `/opt` is an overlay private to the instance (its image's folder below, the
  instance's own changes above), in a mount namespace of its own;
- a PID namespace: the boot script is the instance's process 1's child, and powering the
  instance off ends every process in it, wherever the job put them;
- `shutdown` / `poweroff` / `halt` on its PATH that ask the supervisor to power it off (`-h
  now`, `-h +N`, `-c`); `+N` minutes last `DSTACK_STANDIN_MINUTE_S` seconds each (60 unless
  a test says otherwise);
- a metadata server on loopback (AWS IMDSv2 with its token, or GCE's with its header) that
  answers the paths its cloud gives, such as the instance id and the role's credentials;
- a console log (`console.log` in its folder) of the boot script's output.

When the instance powers itself off, the supervisor ends the process tree and calls
`powered_off(id)` of its cloud's stand-in module, which records it in the cloud (moto's EC2,
or the GCP document). `terminate` ends an instance from outside (the plugin's Delete, or a
test playing a spot reclaim) without that call.
"""

from __future__ import annotations

import contextlib
import http.server
import importlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

WORLD_ENV = "DSTACK_STANDIN_WORLD"
"""The folder of the stand-in clouds' state (instances, documents, images), set by tests."""
MINUTE_ENV = "DSTACK_STANDIN_MINUTE_S"
ROOT = Path(__file__).resolve().parents[2]
PASSED_ENV = ("PYENV_ROOT", "PIP_DEFAULT_TIMEOUT", "PIP_CERT", "PIP_INDEX_URL",
              "PIP_EXTRA_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DISABLE_PIP_VERSION_CHECK",
              "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
              "http_proxy", "https_proxy", "no_proxy", "LANG")
"""What an instance inherits from this machine: how to reach the package registry."""

FAKE_SHUTDOWN = """#!/bin/sh
# The instance's shutdown/poweroff/halt: asks the stand-in supervisor to power it off.
printf '%s %s\\n' "$(basename "$0")" "$*" >> {requests}
"""

INIT = """
import os, subprocess, sys
# Process 1 of the instance: runs the boot script, then reaps every orphan until none is left.
with open(sys.argv[2], "ab", buffering=0) as console:
    subprocess.Popen(["bash", sys.argv[1]], stdout=console, stderr=console,
                     stdin=subprocess.DEVNULL, cwd="/")
    while True:
        try:
            os.wait()
        except ChildProcessError:
            break
"""


@dataclass
class Spec:
    """What an instance is launched with."""

    cloud: str
    id: str
    script: str
    image: str | None = None
    """A folder whose content is the instance's /opt at boot (None: an empty /opt)."""
    env: dict[str, str] = field(default_factory=dict)
    """Cloud endpoints the instance reaches (as a real instance reaches the cloud's)."""
    metadata_style: str = "aws"
    """`aws` (IMDSv2: a token first) or `gcp` (the Metadata-Flavor header)."""
    metadata: dict[str, str] = field(default_factory=dict)
    """Metadata path → body."""


def world() -> Path:
    """The stand-in clouds' folder (from the environment the tests set)."""
    value = os.environ.get(WORLD_ENV)
    if not value:
        raise RuntimeError(f"{WORLD_ENV} is not set: the stand-in clouds keep their state there")
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


def folder(cloud: str, instance_id: str) -> Path:
    """Where one instance keeps its disk, console log and state."""
    return world() / "instances" / f"{cloud}-{instance_id}"


def state(cloud: str, instance_id: str) -> str:
    """`running`, `terminated`, or `unknown` (never launched)."""
    try:
        return (folder(cloud, instance_id) / "state").read_text().strip()
    except OSError:
        return "unknown"


def console(cloud: str, instance_id: str) -> str:
    """What the instance's boot script printed so far."""
    try:
        return (folder(cloud, instance_id) / "console.log").read_text(errors="replace")
    except OSError:
        return ""


def launch(spec: Spec, timeout_s: float = 30.0) -> None:
    """Start the instance's supervisor; return once the boot script has been started.

    Launching a stopped instance again boots it again (its /opt kept, as a disk is); the
    power-off requests of its previous boot are forgotten."""
    where = folder(spec.cloud, spec.id)
    if state(spec.cloud, spec.id) == "running":
        raise RuntimeError(f"instance {spec.id} is already running")
    where.mkdir(parents=True, exist_ok=True)
    for stale in ("requests", "state"):
        (where / stale).unlink(missing_ok=True)
    (where / "spec.json").write_text(json.dumps(asdict(spec)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(where / "supervisor.log", "ab") as log:
        subprocess.Popen([sys.executable, "-m", "tests.standins.instance", str(where)],
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                         start_new_session=True, close_fds=True)
    deadline = time.monotonic() + timeout_s
    while state(spec.cloud, spec.id) != "running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"instance {spec.id} did not start: "
                               f"{(where / 'supervisor.log').read_text()[-2000:]}")
        time.sleep(0.05)


def terminate(cloud: str, instance_id: str, timeout_s: float = 30.0) -> None:
    """End the instance from outside (idempotent): every process in it dies, and its
    supervisor has exited when this returns."""
    where = folder(cloud, instance_id)
    deadline = time.monotonic() + timeout_s
    if state(cloud, instance_id) == "running":
        with open(where / "requests", "a") as f:
            f.write("terminate\n")
        while state(cloud, instance_id) == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
    if state(cloud, instance_id) == "running":  # the supervisor itself is stuck: kill it all
        for name in ("namespace.pid", "supervisor.pid"):
            with contextlib.suppress(OSError, ValueError):
                os.kill(int((where / name).read_text()), signal.SIGKILL)
        (where / "state").write_text("terminated\n")
    with contextlib.suppress(OSError, ValueError):
        supervisor = int((where / "supervisor.pid").read_text())
        while _alive(supervisor) and time.monotonic() < deadline:
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


# -- the supervisor (runs as `python -m tests.standins.instance FOLDER`) ----------------------


class _Metadata(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.tokens: set[str] = set()
        super().__init__(("127.0.0.1", 0), _MetadataHandler)


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    server: _Metadata

    def log_message(self, *_args: object) -> None:
        pass

    def _send(self, status: int, body: str, kind: str = "text/plain") -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        if self.server.spec.metadata_style == "gcp":
            self.send_header("Metadata-Flavor", "Google")
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        if self.server.spec.metadata_style == "aws" and self.path == "/latest/api/token":
            token = secrets.token_urlsafe(24)
            self.server.tokens.add(token)
            self._send(200, token)
        else:
            self._send(404, "not found")

    def do_GET(self) -> None:
        spec = self.server.spec
        if spec.metadata_style == "aws" and \
                self.headers.get("X-aws-ec2-metadata-token") not in self.server.tokens:
            self._send(401, "IMDSv2 needs a token")  # IMDSv1 is off on dstack's instances
            return
        if spec.metadata_style == "gcp" and self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, "missing Metadata-Flavor: Google")
            return
        path = self.path.split("?", 1)[0]
        body = spec.metadata.get(path)
        if body is None:
            self._send(404, "not found")
        else:
            self._send(200, body, "application/json" if body[:1] in "[{" else "text/plain")


class _Supervisor:
    def __init__(self, where: Path) -> None:
        self.where = where
        self.spec = Spec(**json.loads((where / "spec.json").read_text()))
        self.minute_s = float(os.environ.get(MINUTE_ENV, "60"))
        self.requests = where / "requests"
        self.requests.touch()
        self.read = 0
        self.halt_at: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def _instance_env(self, metadata_port: int) -> dict[str, str]:
        bin_dir = self.where / "bin"
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        endpoint = f"127.0.0.1:{metadata_port}"
        env.update({
            "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
            "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{endpoint}/",
            "GCE_METADATA_HOST": endpoint, "GCE_METADATA_IP": endpoint,
            **self.spec.env,
        })
        return env

    def _disk(self) -> tuple[Path, Path, Path]:
        lower = Path(self.spec.image) if self.spec.image else self.where / "empty-image"
        upper, work = self.where / "disk", self.where / "overlay-work"
        for path in (lower, upper, work):
            path.mkdir(parents=True, exist_ok=True)
        return lower, upper, work

    def boot(self, metadata_port: int) -> None:
        bin_dir = self.where / "bin"
        bin_dir.mkdir(exist_ok=True)
        for name in ("shutdown", "poweroff", "halt"):
            path = bin_dir / name
            path.write_text(FAKE_SHUTDOWN.format(requests=shlex.quote(str(self.requests))))
            path.chmod(0o755)
        script = self.where / "user-data.sh"
        script.write_text(self.spec.script)
        (self.where / "init.py").write_text(INIT)
        lower, upper, work = self._disk()
        mount = shlex.join(["mount", "-t", "overlay", "overlay", "-o",
                            f"lowerdir={lower},upperdir={upper},workdir={work}", "/opt"])
        init = shlex.join([sys.executable, str(self.where / "init.py"), str(script),
                           str(self.where / "console.log")])
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--kill-child",
             "--propagation", "private", "sh", "-c", f"{mount} && exec {init}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env=self._instance_env(metadata_port), start_new_session=True, cwd="/")
        (self.where / "namespace.pid").write_text(str(self.proc.pid))

    def _requests(self) -> list[str]:
        with open(self.requests) as f:
            f.seek(self.read)
            lines = f.readlines()
            self.read = f.tell()
        return [line.strip() for line in lines if line.endswith("\n")]

    def _decide(self, line: str) -> str | None:
        """`terminate`, `poweroff`, or None (a power-off scheduled, or cancelled)."""
        words = line.split()
        if not words:
            return None
        if words[0] == "terminate":
            return "terminate"
        if words[0] in ("poweroff", "halt") or "now" in words[1:]:
            return "poweroff"
        if "-c" in words[1:]:
            self.halt_at = None
            return None
        for word in words[1:]:
            if word.startswith("+") and word[1:].isdigit():
                self.halt_at = time.monotonic() + int(word[1:]) * self.minute_s
                return None
        return None

    def run(self) -> str:
        """Supervise until the instance powers off or is terminated; which of the two."""
        while True:
            for line in self._requests():
                decided = self._decide(line)
                if decided:
                    return decided
            if self.halt_at is not None and time.monotonic() >= self.halt_at:
                return "poweroff"
            time.sleep(0.1)

    def end(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # --kill-child ends process 1, and the kernel every other one
            self.proc.wait()


def main(where: Path) -> None:
    """The supervisor of the instance in `where`."""
    (where / "supervisor.pid").write_text(str(os.getpid()))
    sup = _Supervisor(where)
    metadata = _Metadata(sup.spec)
    threading.Thread(target=metadata.serve_forever, daemon=True).start()
    sup.boot(metadata.server_address[1])
    (where / "state").write_text("running\n")
    how = "terminate"
    try:
        how = sup.run()
    finally:
        sup.end()
        if how == "poweroff":
            try:
                importlib.import_module(f"tests.standins.{sup.spec.cloud}").powered_off(
                    sup.spec.id)
            except Exception as exc:  # the instance is off either way; say why the cloud
                print(f"recording the power-off in {sup.spec.cloud} failed: {exc!r}",
                      file=sys.stderr, flush=True)
        (where / "state").write_text("terminated\n")
        metadata.shutdown()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    main(Path(sys.argv[1]))

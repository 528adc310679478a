"""What the AWS and GCP backends share: the workspace cache, the caller's address, app ports,
the dstack wheel the instance installs, and the bootstrap script around the runner.

A cloud run's instance boots with a script (user-data / startup-script) that holds no secret:
it schedules a watchdog power-off after the workflow's maximum duration, installs the exact
dstack wheel the CLI uploaded to the workspace bucket (fetched with the instance's own role,
checked against its SHA-256), starts the runner against the bucket's store, and powers the
machine off when the runner exits, whatever its status.

App ports on a cloud instance are fixed, not free ports: the job's port `i` is
`APP_PORT_BASE + i`, opened to the caller's address only; the bootstrap passes the list to the
runner as `DSTACK_APP_PORTS` (comma-separated, in order).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import re
import shlex
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from dstack.catalogue.offers import Offer, choose_offer
from dstack.config.backends import ResourceChange
from dstack.config.profiles import Profile, workspace_record
from dstack.errors import BackendError, UsageError
from dstack.home import write_private
from dstack.run.job import Job
from dstack.run.record import RunRecord, run_stack_name
from dstack.runner.bootstrap import render_bootstrap
from dstack.spec.models import Resources
from dstack.stacks.engine import Engine
from dstack.stacks.run_stacks import RunStacks
from dstack.stacks.wheel import build_wheel
from dstack.store.base import Store, open_store

APP_PORT_BASE = 8000
"""The job's port `i` on a cloud instance is `APP_PORT_BASE + i` (8000, 8001, ...)."""
MAX_APP_PORTS = 20
DEFAULT_DISK_GIB = 100
DEFAULT_MAX_DURATION_S = 72 * 3600
REMOTE_ROOT = "/opt/dstack"
CHECKIP_URL = "https://checkip.amazonaws.com"
CHECKIP_TIMEOUT_S = 5.0
CALLER_ENV = "DSTACK_CALLER_CIDR"
WHEEL_ENV = "DSTACK_WHEEL"
GIB = 1024**3
INSTANCE_CHECK_S = 10.0
"""How often a follower asks the cloud whether a run's instance still runs."""
GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped", "gone",
                         "TERMINATED", "STOPPING", "STOPPED", "SUSPENDED"})
"""Instance states (EC2's, then GCE's) in which no runner can be running."""
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$", re.IGNORECASE)
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


# -- small pure helpers ----------------------------------------------------------------------


def slug(text: str, limit: int = 63) -> str:
    """`text` as a cloud-safe name part: lowercase letters, digits and `-`, at most `limit`."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return re.sub(r"-{2,}", "-", cleaned)[:limit].strip("-") or "x"


def app_ports(count: int) -> list[int]:
    """The fixed ports a cloud job with `count` ports serves on, in order."""
    if count > MAX_APP_PORTS:
        raise UsageError(f"the job asks for {count} ports; a cloud run opens at most "
                         f"{MAX_APP_PORTS}", "Serve fewer apps from one run.")
    return [APP_PORT_BASE + i for i in range(count)]


def parse_duration(value: object) -> int:
    """Seconds of `72h`, `90m`, `2d`, `3600s` or a bare number of seconds (a minute or more)."""
    match = None if isinstance(value, bool) else _DURATION.match(str(value))
    seconds = float(match[1]) * _UNIT_S[match[2].lower()] if match else 0.0
    if seconds < 60:
        raise UsageError(f"max_duration {value!r} is not a duration of a minute or more",
                         "Write it like 72h, 90m or 2d.")
    return int(seconds)


def format_duration(seconds: int) -> str:
    """`72h`, `90m`, `45s`: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def max_duration_s(job: Job, profile: Profile) -> int:
    """The workflow's `max_duration` (the job's, then the profile's setting), else 72 h."""
    value = getattr(job, "max_duration", None) or profile.settings.get("max_duration")
    return parse_duration(value) if value else DEFAULT_MAX_DURATION_S


def job_resources(job: Job) -> Resources:
    """The job's `resources` as the validated spec model."""
    return Resources.model_validate(job.resources)


def disk_gib(resources: Resources) -> int:
    """The root disk size in GiB: the job's `disk` rounded up, else `DEFAULT_DISK_GIB`."""
    return math.ceil(resources.disk / GIB) if resources.disk else DEFAULT_DISK_GIB


def normalize_cidr(text: str, origin: str) -> str:
    """`text` as a network (a bare address becomes /32 or /128); the whole internet refused."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise UsageError(f"{origin} gives {text!r}, which is not an IP address or CIDR",
                         "Give your public address, e.g. 203.0.113.7 or 203.0.113.7/32.") from exc
    if net.prefixlen == 0:
        raise UsageError(f"{origin} gives {net}, which opens app ports to the whole internet",
                         "Give your own public address (/32) or your network's range.")
    return str(net)


def caller_cidr(profile: Profile, fetch: Callable[[], str] | None = None) -> str:
    """The caller's public address as a CIDR, the only source app ports are opened to.

    Env `DSTACK_CALLER_CIDR`, else the profile setting `caller_cidr`, else the address
    `https://checkip.amazonaws.com` sees (asked with a short timeout).
    """
    if os.environ.get(CALLER_ENV):
        return normalize_cidr(os.environ[CALLER_ENV], f"${CALLER_ENV}")
    if profile.settings.get("caller_cidr"):
        return normalize_cidr(str(profile.settings["caller_cidr"]),
                              f"the caller_cidr setting of profile {profile.name!r}")
    try:
        text = (fetch or _checkip)()
    except OSError as exc:
        raise BackendError(f"could not learn your public address from {CHECKIP_URL}: {exc}",
                           f"Set {CALLER_ENV} (or the profile's caller_cidr) to your public "
                           "address; app ports are opened to it only.") from exc
    return normalize_cidr(text, CHECKIP_URL)


def planned_caller(profile: Profile) -> str:
    """The caller's address for a plan, without asking the network (`--dry-run`)."""
    if os.environ.get(CALLER_ENV) or profile.settings.get("caller_cidr"):
        return caller_cidr(profile, fetch=lambda: "")
    return "your public address /32 (looked up when the run starts)"


def _checkip() -> str:
    with urllib.request.urlopen(CHECKIP_URL, timeout=CHECKIP_TIMEOUT_S) as resp:
        return str(resp.read(64).decode("ascii", "replace")).strip()


# -- the dstack wheel the instance installs ---------------------------------------------------


@dataclass(frozen=True)
class Wheel:
    """The dstack wheel a cloud instance installs: the file, its key in the workspace bucket
    and the file's SHA-256, which the instance checks before installing it."""

    path: Path
    key: str
    sha256: str

    @property
    def name(self) -> str:
        """The wheel's file name."""
        return self.path.name


def find_wheel(profile: Profile, cache: Path) -> Wheel:
    """The wheel to install on instances: env `DSTACK_WHEEL` or the profile's `wheel` (a
    file), else this very dstack built by `dstack.stacks.wheel.build_wheel` (once per source
    digest).

    Its key is `wheels/<digest>/<file name>`, so a run installs exactly the code its CLI ran.
    """
    given = os.environ.get(WHEEL_ENV) or profile.settings.get("wheel")
    if given:
        path = Path(str(given)).expanduser()
        if not path.is_file() or not path.name.startswith("dstack-") or path.suffix != ".whl":
            raise UsageError(f"{path} is not a dstack wheel file",
                             f"Point {WHEEL_ENV} (or the profile's `wheel`) at dstack-*.whl.")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return Wheel(path=path, key=f"wheels/{digest[:20]}/{path.name}", sha256=digest)
    built = build_wheel(cache)
    digest = hashlib.sha256(built.path.read_bytes()).hexdigest()
    return Wheel(path=built.path, key=built.store_key, sha256=digest)


# -- the bootstrap script ---------------------------------------------------------------------


def cloud_preamble(wheel: Wheel, fetch: list[str], max_minutes: int,
                   docker: bool = False) -> list[str]:
    """Lines before the runner starts: watchdog, power-off on exit, one boot only, Docker
    when the job needs it and the image lacks it, a venv with the exact wheel (`fetch` puts
    it at `REMOTE_ROOT/<wheel name>`)."""
    venv = f"{REMOTE_ROOT}/venv"
    wheel_path = f"{REMOTE_ROOT}/{wheel.name}"
    q = shlex.quote
    apt = "apt-get -o DPkg::Lock::Timeout=300 -q"
    docker_lines = [f"command -v docker >/dev/null 2>&1 || {{ {apt} update && {apt} install -y "
                    "docker.io; }"] if docker else []
    return [
        'export HOME="${HOME:-/root}" DEBIAN_FRONTEND=noninteractive',
        "# Watchdog: power off after the workflow's max_duration even if no CLI is watching.",
        f"shutdown -h +{max_minutes} {q('dstack: max_duration reached')} || true",
        "# Power off when this script, and then the runner it becomes, exits for any reason.",
        "( tail --pid=$$ -f /dev/null; shutdown -h now ) >/dev/null 2>&1 &",
        f"mkdir -p {q(REMOTE_ROOT)}",
        "# A second boot means the first attempt was cut short: never run a job twice.",
        f"if [ -e {q(REMOTE_ROOT + '/booted')} ]; then exit 0; fi",
        f"touch {q(REMOTE_ROOT + '/booted')}",
        f"python3 -m venv {q(venv)} || {{ {apt} update && {apt} install -y python3-venv "
        f"&& python3 -m venv --clear {q(venv)}; }}",
        *docker_lines,
        f"{q(venv + '/bin/pip')} install -q --upgrade pip",
        *fetch,
        f"echo {q(f'{wheel.sha256}  {wheel_path}')} | sha256sum -c -",
        f"{q(venv + '/bin/pip')} install -q {q(wheel_path)}",
    ]


def cloud_bootstrap(run: RunRecord, *, store_url: str, wheel: Wheel, fetch: list[str],
                    max_duration: int, env: dict[str, str] | None = None) -> str:
    """The whole boot script of a cloud instance for `run` (holds no secret)."""
    ports = app_ports(run.job.ports)
    extra = {"DSTACK_APP_PORTS": ",".join(map(str, ports))} if ports else {}
    return render_bootstrap(
        python=f"{REMOTE_ROOT}/venv/bin/python", store_url=store_url, run=run.name,
        workdir=f"{REMOTE_ROOT}/runs/{run.name}", cache=f"{REMOTE_ROOT}/cache",
        host="0.0.0.0",
        preamble=cloud_preamble(wheel, fetch, max(1, math.ceil(max_duration / 60)),
                                docker=run.job.needs_docker),
        env={**(env or {}), **extra},
    )


# -- the shared backend ------------------------------------------------------------------------


class CloudBackend(RunStacks):
    """The operations AWS and GCP do alike; subclasses declare the programs."""

    name = "cloud"
    cloud = "aws"

    def __init__(self, profile: Profile, home: Path) -> None:
        self.profile = profile
        self.home = home
        self.engine = Engine(home, profile.state_url)
        self.cache = home / "cache"
        self._wheel: Wheel | None = None
        self._seen: dict[str, tuple[float, tuple[str, str] | None]] = {}

    # -- settings --------------------------------------------------------------------------

    def setting(self, key: str, default: str | None = None) -> str | None:
        """A profile setting as text (None when absent)."""
        value = self.profile.settings.get(key)
        return default if value in (None, "") else str(value)

    def required(self, key: str, example: str) -> str:
        """A setting the backend cannot work without; a UsageError that says how to set it."""
        value = self.setting(key)
        if value is None:
            raise UsageError(f"profile {self.profile.name!r} has no `{key}` setting",
                             f"Add it, e.g. `{key}: {example}` under the profile's settings "
                             f"(`dstack config add {self.cloud} {self.profile.name} ...`).")
        return value

    def location(self) -> str:
        """The region (or zone) offers are chosen in."""
        raise NotImplementedError

    def named_bucket(self) -> str | None:
        """The bucket the profile names (`bucket`, else the `store_url`'s), if any."""
        named = self.setting("bucket")
        stored = urlparse(self.setting("store_url") or "").netloc or None
        if named and stored and named != stored:
            raise UsageError(f"profile {self.profile.name!r} names bucket {named!r} but its "
                             f"store_url is in bucket {stored!r}",
                             "Make the two agree: the instances can read the bucket only.")
        return named or stored

    def bucket(self) -> str:
        """The workspace bucket: the one the profile names, else the name Pulumi gave it
        (bringing the workspace up once)."""
        return self.named_bucket() or str(self.ensure_workspace()["bucket"])

    def store_url(self) -> str:
        """The profile's store: its `store_url` setting, else built from the bucket."""
        return self.setting("store_url") or self.built_store_url()

    def built_store_url(self) -> str:
        """`s3://…` / `gs://…` of the workspace bucket with the profile's options."""
        raise NotImplementedError

    def instance_store_url(self) -> str:
        """The store as the instance opens it: without a local credentials profile (the
        instance uses its own identity)."""
        parsed = urlparse(self.store_url())
        query = [(k, v) for k, v in parse_qsl(parsed.query) if k != "profile"]
        return urlunparse(parsed._replace(query=urlencode(query)))

    def store(self) -> Store:
        """The store of the workspace bucket."""
        return open_store(self.store_url())

    # -- workspace -------------------------------------------------------------------------

    @property
    def workspace_stack(self) -> str:
        """The long-lived workspace stack of this profile."""
        return f"workspace-{self.profile.name}"

    def workspace_config(self) -> Any:
        """The frozen dataclass the workspace program is built from."""
        raise NotImplementedError

    def workspace_program(self, config: Any) -> Callable[[], None]:
        """The workspace program for `config`."""
        raise NotImplementedError

    def _workspace_cache(self) -> Path:
        return workspace_record(self.home, self.profile)

    def _workspace_key(self, config: Any) -> str:
        text = json.dumps(asdict(config), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def cached_workspace(self) -> dict[str, Any] | None:
        """The workspace outputs of the last `up` with today's settings, if any."""
        try:
            doc = json.loads(self._workspace_cache().read_text())
        except (OSError, ValueError):
            return None
        if doc.get("key") != self._workspace_key(self.workspace_config()):
            return None
        outputs = doc.get("outputs")
        return outputs if isinstance(outputs, dict) else None

    def ensure_workspace(self) -> dict[str, Any]:
        """Bring up the workspace stack once (again when its settings change); its outputs."""
        cached = self.cached_workspace()
        if cached is not None:
            return cached
        config = self.workspace_config()
        outputs, _ = self.engine.up(self.workspace_stack, self.workspace_program(config))
        doc = {"key": self._workspace_key(config), "outputs": outputs}
        write_private(self._workspace_cache(), json.dumps(doc, indent=1).encode())
        return outputs

    # -- runs ------------------------------------------------------------------------------

    def offer(self, job: Job) -> Offer:
        """The cheapest catalogue offer for the job here (NoOfferError is the refusal)."""
        return choose_offer(job_resources(job), self.cloud, self.location())

    def check_resources(self, job: Job) -> None:
        """Refuse, before anything is created, a job no instance type here fits."""
        app_ports(job.ports)
        self.offer(job)

    def wheel(self) -> Wheel:
        """The dstack wheel this process installs on instances (found or built once)."""
        if self._wheel is None:
            self._wheel = find_wheel(self.profile, self.cache)
        return self._wheel

    def publish_wheel(self) -> Wheel:
        """Upload the wheel to the workspace bucket, under `wheels/<digest>/`."""
        wheel = self.wheel()
        self._put(wheel.key, wheel.path)
        return wheel

    def _put(self, key: str, path: Path) -> None:
        self.store().put_file(key, path)

    def caller(self, job: Job) -> str | None:
        """The address app ports open to: None when the job serves no port."""
        return caller_cidr(self.profile) if job.ports else None

    def run_config(self, run: RunRecord, bootstrap: str, workspace: dict[str, Any]) -> Any:
        """The run program's config (the subclass's)."""
        raise NotImplementedError

    def run_program(self, config: Any) -> Callable[[], None]:
        """The run stack's program for `config` (the subclass's)."""
        raise NotImplementedError

    def instance_info(self, run: RunRecord, cfg: Any, outputs: dict[str, Any],
                      offer: Offer) -> dict[str, object]:
        """What the run records about its instance (the subclass's)."""
        raise NotImplementedError

    def provision(self, run: RunRecord, bootstrap: str
                  ) -> tuple[list[ResourceChange], dict[str, object]]:
        """Ensure the workspace, upload the wheel, bring up `run-<name>`."""
        workspace = self.ensure_workspace()
        self.publish_wheel()
        cfg = self.run_config(run, bootstrap, workspace)
        outputs, changes = self.engine.up(run_stack_name(run.name), self.run_program(cfg))
        return changes, self.instance_info(run, cfg, outputs, self.offer(run.job))

    def instance_state(self, run: RunRecord) -> tuple[str, str] | None:
        """(state, the cloud's reason) of the run's instance, None when the cloud cannot be
        asked (the subclass's; the base never asks)."""
        return None

    def _instance(self, run: RunRecord) -> tuple[str, str] | None:
        """`instance_state`, asked at most every INSTANCE_CHECK_S per run."""
        seen = self._seen.get(run.name)
        if seen is None or time.monotonic() - seen[0] >= INSTANCE_CHECK_S:
            seen = (time.monotonic(), self.instance_state(run) if run.instance.get("id")
                    else None)
            self._seen[run.name] = seen
        return seen[1]

    def runner_alive(self, run: RunRecord) -> bool | None:
        """False once the cloud says the run's instance no longer runs (a spot reclaim, a
        power-off); otherwise unknown, and the runner's heartbeat tells."""
        found = self._instance(run)
        return False if found and found[0] in GONE_STATES else None

    def runner_gone_reason(self, run: RunRecord) -> str | None:
        """What the cloud said of the run's instance when it found it gone."""
        found = self._seen.get(run.name, (0.0, None))[1]
        if not found or found[0] not in GONE_STATES:
            return None
        return f"its instance {run.instance.get('id')} is {found[0]}" + \
            (f" ({found[1]})" if found[1] else "")

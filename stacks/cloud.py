"""The base of the AWS and GCP backends: what both do alike around their programs.

A cloud backend is generic over its two program configs, frozen dataclasses: the workspace's
(`W`: the bucket and the instances' identity, brought up once per profile and cached with
its outputs under the dstack home until its settings change) and one run's (`R`: firewall
and instance). A subclass says how its profile's settings become those configs, which
programs declare them, what the run records about its instance, and where offers are chosen;
the base does the rest: the workspace cache, the store in the workspace bucket, the wheel
the instance installs, bringing a run's stack up, and asking the cloud whether an instance
is gone.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Generic, TypeVar
from urllib.parse import urlparse

from dstack.catalogue.offers import Offer, choose_offer
from dstack.config.backends import ResourceChange
from dstack.config.profiles import Profile, workspace_record
from dstack.errors import StackBusyError, UsageError
from dstack.home import write_private
from dstack.run.job import Job
from dstack.run.record import RunRecord, run_stack_name
from dstack.stacks.caller import caller_cidr
from dstack.stacks.instance_spec import app_ports, job_resources
from dstack.stacks.run_stacks import RunStacks
from dstack.stacks.wheel import Wheel
from dstack.store.base import Store, open_store, without_local_profile

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

W = TypeVar("W", bound="DataclassInstance")
"""The workspace program's config (`AwsWorkspace`, `GcpWorkspace`)."""
R = TypeVar("R", bound="DataclassInstance")
"""A run program's config (`AwsRun`, `GcpRun`)."""
Program = Callable[[], None]
Outputs = Mapping[str, object]

INSTANCE_CHECK_S = 10.0
"""How often a follower asks the cloud whether a run's instance still runs."""
WORKSPACE_WAIT_S = 600.0
"""How long a first run waits for the workspace stack while another engine (a teammate's,
in a shared state) holds its lock, bringing it up."""
GONE_STATES = frozenset({"shutting-down", "terminated", "stopping", "stopped", "gone",
                         "TERMINATED", "STOPPING", "STOPPED", "SUSPENDED"})
"""Instance states (EC2's, then GCE's) in which no runner can be running."""


class CloudBackend(RunStacks, ABC, Generic[W, R]):
    """The operations AWS and GCP do alike; a subclass declares its configs and programs.

    `name` is the backend's name, also the cloud's in the catalogue.
    """

    name: str

    def __init__(self, profile: Profile, home: Path) -> None:
        super().__init__(profile, home)
        self._seen: dict[str, tuple[float, tuple[str, str] | None]] = {}
        self._identity: str | None = None

    # -- what a subclass declares ----------------------------------------------------------

    @abstractmethod
    def ask_identity(self) -> str:
        """Who the profile's credentials are, as the cloud says (`identity` asks once)."""

    @abstractmethod
    def location(self) -> str:
        """The region (or zone) offers are chosen in."""

    @abstractmethod
    def built_store_url(self) -> str:
        """`s3://…` / `gs://…` of the workspace bucket with the profile's options."""

    @abstractmethod
    def workspace_config(self) -> W:
        """The workspace as the profile's settings describe it."""

    @abstractmethod
    def workspace_program(self, config: W) -> Program:
        """The workspace stack's program for `config`."""

    @abstractmethod
    def run_config(self, run: RunRecord, bootstrap: str, workspace: Outputs) -> R:
        """The run program's config, from the run, its boot script and the workspace's
        outputs."""

    @abstractmethod
    def run_program(self, config: R) -> Program:
        """The run stack's program for `config`."""

    @abstractmethod
    def instance_info(self, run: RunRecord, cfg: R, outputs: Outputs,
                      offer: Offer) -> dict[str, object]:
        """What the run records about its instance, from the run stack's outputs."""

    def instance_state(self, run: RunRecord) -> tuple[str, str] | None:
        """(state, the cloud's reason) of the run's instance; None when the cloud cannot be
        asked (this default: never asked, the runner's heartbeat tells)."""
        return None

    # -- settings --------------------------------------------------------------------------

    def identity(self) -> str:
        """The cloud identity of the profile's credentials, asked once per process."""
        if self._identity is None:
            self._identity = self.ask_identity()
        return self._identity

    def required(self, key: str, example: str) -> str:
        """A setting the backend cannot work without; a UsageError that says how to set it."""
        value = self.setting(key)
        if value is None:
            raise UsageError(f"profile {self.profile.name!r} has no `{key}` setting",
                             f"Add it, e.g. `{key}: {example}` under the profile's settings "
                             f"(`dstack config add {self.name} {self.profile.name} ...`).")
        return value

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

    def instance_store_url(self) -> str:
        """The store as the instance opens it: without a local credentials profile (the
        instance uses its own identity)."""
        return without_local_profile(self.store_url())

    def store(self) -> Store:
        """The store of the workspace bucket."""
        return open_store(self.store_url())

    # -- workspace -------------------------------------------------------------------------

    def _workspace_cache(self) -> Path:
        return workspace_record(self.home, self.profile)

    def _workspace_key(self, config: W) -> str:
        text = json.dumps(asdict(config), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def cached_workspace(self) -> dict[str, object] | None:
        """The workspace outputs of the last `up` with today's settings, if any."""
        try:
            doc = json.loads(self._workspace_cache().read_text())
        except (OSError, ValueError):
            return None
        if doc.get("key") != self._workspace_key(self.workspace_config()):
            return None
        outputs = doc.get("outputs")
        return outputs if isinstance(outputs, dict) else None

    def ensure_workspace(self) -> dict[str, object]:
        """Bring up the workspace stack once (again when its settings change); its outputs."""
        cached = self.cached_workspace()
        if cached is not None:
            return cached
        config = self.workspace_config()
        deadline = time.monotonic() + WORKSPACE_WAIT_S
        while True:
            try:
                outputs, _ = self.engine.up(self.workspace_stack, self.workspace_program(config))
                break
            except StackBusyError:  # a teammate's dstack is bringing it up: wait for it
                if time.monotonic() > deadline:
                    raise
                time.sleep(2.0)
        doc = {"key": self._workspace_key(config), "outputs": outputs}
        write_private(self._workspace_cache(), json.dumps(doc, indent=1).encode())
        return outputs

    # -- runs ------------------------------------------------------------------------------

    def offer(self, job: Job) -> Offer:
        """The cheapest catalogue offer for the job here (NoOfferError is the refusal)."""
        return choose_offer(job_resources(job), self.name, self.location())

    def check_resources(self, job: Job) -> None:
        """Refuse, before anything is created, a job no instance type here fits."""
        app_ports(job.ports)
        self.offer(job)

    def publish_wheel(self) -> Wheel:
        """Upload the wheel to the workspace bucket, under `wheels/<digest>/`."""
        wheel = self.wheel()
        self._put(wheel.store_key, wheel.path)
        return wheel

    def _put(self, key: str, path: Path) -> None:
        self.store().put_file(key, path)

    def caller(self, job: Job) -> str | None:
        """The address app ports open to: None when the job serves no port."""
        return caller_cidr(self.profile) if job.ports else None

    def provision(self, run: RunRecord, bootstrap: str
                  ) -> tuple[list[ResourceChange], dict[str, object]]:
        """Ensure the workspace, upload the wheel, bring up `run-<name>`."""
        workspace = self.ensure_workspace()
        self.publish_wheel()
        cfg = self.run_config(run, bootstrap, workspace)
        outputs, changes = self.engine.up(run_stack_name(run.name), self.run_program(cfg))
        return changes, self.instance_info(run, cfg, outputs, self.offer(run.job))

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

"""Runs: the versioned `runs/<run>/run.json` document, its statuses and store access.

The CLI creates the document (claiming the run's name atomically) and the runner moves it
through its statuses. Every update is a read-modify-write under the store's `update_json`,
and a terminal status is never overwritten.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, Field

from dstack.errors import NotFoundError, StoreError, UsageError
from dstack.json_types import JsonDoc
from dstack.names import did_you_mean, run_name_candidates
from dstack.run.billing import Billing
from dstack.run.job import Job
from dstack.run.status import TERMINAL as TERMINAL  # re-exported
from dstack.run.status import Status as Status  # re-exported
from dstack.store.base import Store
from dstack.store.keys import RUNS, run_key

SCHEMA_VERSION = 1


def now() -> str:
    """The current UTC time as ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class App(BaseModel):
    """An app the job serves, once its port answers."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    name: str
    port: int
    url: str


class RunRecord(BaseModel):
    """The document `runs/<run>/run.json`."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    version: int = Field(SCHEMA_VERSION, description="Schema version of this document.")
    name: str
    workflow: str | None = Field(None, description="Workflow name; None for a provider form.")
    project: str | None = Field(None, description="The project it belongs to: its git remote's "
                                "URL (no credentials), else its folder; None in older records.")
    provider: str
    profile: str
    backend: str
    status: Status = Status.SUBMITTED
    submitted_at: str = Field(default_factory=now)
    started_at: str | None = None
    finished_at: str | None = None
    exit_code: int | None = None
    message: str | None = Field(None, description="Why the run ended the way it did.")
    job: Job
    deps: list[str] = Field(default_factory=list, description="Runs whose artifacts it uses.")
    code: str | None = Field(None, description="sha256 of the code archive in the store.")
    tag: str | None = Field(None, description="Tag to add when the run succeeds.")
    stack: str
    torn_down: bool = False
    instance: JsonDoc = Field(default_factory=dict)
    price_per_hour: float | None = Field(None, description="USD per hour of the run's instance, "
                                         "from the instance catalogue (`billing` says more); "
                                         "None on the local and Kubernetes backends.")
    billing: Billing | None = Field(None, description="The instance type, its list price and "
                                    "when it was billed; None without a price or in older "
                                    "records.")
    apps: list[App] = Field(default_factory=list)
    submitter: JsonDoc = Field(default_factory=dict,
                               description="Host and pid of the CLI that submitted it.")
    detached: bool = False
    owner: str | None = Field(None, description="Who started it: the AWS caller ARN, the GCP "
                              "account, the Kubernetes user or the local user; None in older "
                              "records.")

    def app_url(self, app: App) -> str:
        """The app's URL as the user opens it (`public_url`)."""
        return public_url(app.url, self.instance.get("public_ip"))


def public_url(url: str, public_ip: str | None) -> str:
    """An app's URL as the user opens it: a cloud runner binds 0.0.0.0, and the instance's
    public address stands in for it."""
    return url.replace("//0.0.0.0:", f"//{public_ip}:", 1) if public_ip else url


def run_stack_name(name: str) -> str:
    """The ephemeral Pulumi stack of a run."""
    return f"run-{name}"


def create_run(store: Store, make: Callable[[str], RunRecord]) -> RunRecord:
    """Claim a fresh run name and store the record `make(name)` under it, atomically."""
    for attempt, name in enumerate(run_name_candidates()):
        record: RunRecord = make(name)
        if store.create_json(run_key(name), record.model_dump(mode="json")):
            return record
        if attempt > 10_000:
            break
    raise UsageError("could not find a free run name")  # pragma: no cover


def check_run_name(name: str) -> str:
    """Return `name` if it can be a run's name; UsageError otherwise (before any store key
    is made from it: `../x` must not reach the store)."""
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", name):
        raise UsageError(f"{name!r} is not a run name",
                         "Run names look like `brave-otter-1`; `dstack ps -a` lists the runs.")
    return name


def load_run(store: Store, name: str) -> RunRecord:
    """The run called `name`; NotFoundError with a suggestion when there is none."""
    check_run_name(name)
    try:
        doc = store.get_json(run_key(name))
    except NotFoundError:
        raise NotFoundError(f"no run named {name!r}",
                            _suggestion(store, name) or "`dstack ps -a` lists the runs.",
                            ) from None
    return RunRecord.model_validate(doc)


def _suggestion(store: Store, name: str) -> str | None:
    """A "did you mean" naming the run closest to `name` (run names are lower case); only
    asked for when a lookup missed, as it lists every run."""
    try:
        names = list_run_names(store)
    except StoreError:
        return None
    return did_you_mean(name.lower(), names)


def list_run_names(store: Store) -> list[str]:
    """Names of every run in the store."""
    return store.list_dirs(RUNS)


def update_run(store: Store, name: str, **changes: object) -> RunRecord:
    """Apply `changes` to the run's document unless it already finished.

    A change of `status` to a terminal one stamps `finished_at`. Once a run is finished only
    bookkeeping fields (`torn_down`, `instance`, `price_per_hour`, `billing`, `apps`,
    `message`) may still change.
    """

    def mutate(doc: JsonDoc) -> JsonDoc | None:
        if not doc:
            raise NotFoundError(f"no run named {name!r}")
        current = RunRecord.model_validate(doc)
        allowed = changes
        if current.status.finished:
            allowed = {k: v for k, v in changes.items()
                       if k in ("torn_down", "instance", "price_per_hour", "billing", "apps",
                                "message")}
            if "message" in allowed and current.message:
                allowed.pop("message")
            if not allowed:
                return None
        new = RunRecord.model_validate({**current.model_dump(), **allowed})
        if "status" in allowed and new.status.finished and not new.finished_at:
            new.finished_at = now()
        return new.model_dump(mode="json")

    return RunRecord.model_validate(store.update_json(run_key(name), mutate))

"""The life cycle's decisions, with a store in tmp_path and a fake backend: when a run's stack
is torn down (`needs_teardown`, `runner_alive`), how a run that ended without saying so is
ended (`end_unfinished`), what `reconcile` does, and `gc`'s rules and report. The subprocess
tests in tests/integration reach the same decisions through real crashes, slowly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from dstack.config.backends import ResourceChange, StackInfo
from dstack.config.profiles import DURATIONS, Profile
from dstack.errors import BackendError, NotFoundError, StackBusyError
from dstack.run import lifecycle
from dstack.run.context import Context
from dstack.run.job import Job
from dstack.run.lifecycle import (
    end_unfinished,
    gc,
    needs_teardown,
    reconcile,
    runner_alive,
    submitter,
)
from dstack.run.record import RunRecord, Status, load_run, now
from dstack.store.keys import code_key, heartbeat_key, run_key
from dstack.store.local import LocalStore

LONG_AGO = "2020-01-01T00:00:00.000+00:00"
HEARTBEAT_STALE_S = DURATIONS["heartbeat_timeout"]


@dataclass
class FakeBackend:
    """What the life cycle asks of a backend, answered from fields; records teardowns."""

    name: str = "fake"
    alive: bool | None = None
    gone_reason: str | None = None
    listed: list[StackInfo] = field(default_factory=list)
    list_fails: bool = False
    failing: set[str] = field(default_factory=set)
    busy: set[str] = field(default_factory=set)
    locks: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    lock_stacks: list[str] = field(default_factory=list)
    """Stacks whose locks gc asks `run_gone` about (what it answered: `asked_about`)."""
    asked_about: dict[str, bool] = field(default_factory=dict)

    def runner_alive(self, run: RunRecord) -> bool | None:
        return self.alive

    def runner_gone_reason(self, run: RunRecord) -> str | None:
        return self.gone_reason

    def teardown(self, run_name: str) -> list[ResourceChange]:
        if run_name in self.busy:
            raise StackBusyError(f"stack run-{run_name} is busy")
        if run_name in self.failing:
            raise BackendError(f"the engine failed on run-{run_name}")
        self.torn.append(run_name)
        return [ResourceChange("delete", "dstack:local:Runner", "runner")]

    def stacks(self) -> list[StackInfo]:
        if self.list_fails:
            raise BackendError("the state backend cannot be read")
        return self.listed

    def clear_stale_locks(self, run_gone: Any = None) -> list[str]:
        self.asked_about = {s: run_gone(s) for s in self.lock_stacks} if run_gone else {}
        return self.locks


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "store")


@pytest.fixture
def ctx(tmp_path: Path, store: LocalStore, backend: FakeBackend) -> Context:
    """A context whose store is a folder in tmp_path and whose backend is `backend`."""
    context = Context(profile=Profile(name="test", backend="local"), home=tmp_path / "home")
    context.__dict__["store"] = store  # what its cached properties would open
    context.__dict__["backend"] = backend
    return context


@cache
def dead_submitter() -> dict[str, object]:
    """The submitter of a CLI that has exited (a child process, waited for)."""
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    return {"host": socket.gethostname(), "pid": int(child.stdout), "start_ticks": 1}


def put(ctx: Context, name: str, status: Status = Status.RUNNING, *,
        detached: bool = False, live_submitter: bool = False, instance: bool = True,
        **fields: Any) -> RunRecord:
    """Store a run record (started long ago, by a CLI that is gone unless `live_submitter`)."""
    record = RunRecord.model_validate({
        "name": name, "provider": "bash", "profile": "test", "backend": "fake",
        "job": Job(provider="bash"), "stack": f"run-{name}", "status": status,
        "detached": detached, "submitted_at": LONG_AGO, "started_at": LONG_AGO,
        "submitter": submitter() if live_submitter else dead_submitter(),
        "instance": {"pid": 4242} if instance else {}, **fields})
    ctx.store.put_json(run_key(name), record.model_dump(mode="json"))
    return record


def beat(ctx: Context, name: str, seconds_ago: float) -> None:
    ctx.store.put_json(heartbeat_key(name), {"at": time.time() - seconds_ago})


# -- needs_teardown and runner_alive ----------------------------------------------------------


def test_a_finished_run_is_torn_down(ctx: Context) -> None:
    assert needs_teardown(ctx, put(ctx, "done-1", Status.DONE))
    assert needs_teardown(ctx, put(ctx, "failed-1", Status.FAILED, instance=False))


def test_a_run_already_torn_down_is_not_torn_down_again(ctx: Context) -> None:
    assert not needs_teardown(ctx, put(ctx, "done-1", Status.DONE, torn_down=True))


def test_an_attached_run_whose_cli_still_runs_is_left_to_that_cli(ctx: Context,
                                                                  backend: FakeBackend) -> None:
    backend.alive = False  # even when its runner is gone: its CLI sees that and tears down
    for status in (Status.DONE, Status.RUNNING, Status.PROVISIONING):
        assert not needs_teardown(ctx, put(ctx, "mine-1", status, live_submitter=True))


def test_a_detached_run_is_not_watched_by_the_cli_that_submitted_it(ctx: Context) -> None:
    assert needs_teardown(ctx, put(ctx, "away-1", Status.DONE, detached=True,
                                   live_submitter=True))


def test_a_run_without_an_instance_waits_for_a_live_submitter_only(ctx: Context) -> None:
    for status in (Status.SUBMITTED, Status.PROVISIONING):
        assert needs_teardown(ctx, put(ctx, "cut-1", status, instance=False))
        assert not needs_teardown(ctx, put(ctx, "slow-1", status, instance=False,
                                           detached=True, live_submitter=True))


def test_a_running_run_is_torn_down_when_the_backend_says_its_runner_is_gone(
        ctx: Context, backend: FakeBackend) -> None:
    run = put(ctx, "run-1")
    beat(ctx, "run-1", 0)  # the backend's answer wins over a fresh heartbeat
    backend.alive = False
    assert runner_alive(ctx, run) is False and needs_teardown(ctx, run)
    backend.alive = True
    beat(ctx, "run-1", HEARTBEAT_STALE_S * 10)
    assert runner_alive(ctx, run) is True and not needs_teardown(ctx, run)


def test_without_the_backends_answer_a_stale_heartbeat_means_the_runner_is_gone(
        ctx: Context) -> None:
    for status in (Status.RUNNING, Status.UPLOADING):
        run = put(ctx, "cloud-1", status)
        beat(ctx, "cloud-1", HEARTBEAT_STALE_S + 5)
        assert runner_alive(ctx, run) is False and needs_teardown(ctx, run)
        beat(ctx, "cloud-1", 5)
        assert runner_alive(ctx, run) is True and not needs_teardown(ctx, run)


def test_without_a_heartbeat_the_start_time_stands_in_for_it(ctx: Context) -> None:
    assert runner_alive(ctx, put(ctx, "old-1")) is False  # started long ago, never beat
    recent = put(ctx, "new-1", started_at=now())
    assert runner_alive(ctx, recent) is True


def test_the_heartbeat_is_only_read_for_a_running_job(ctx: Context) -> None:
    run = put(ctx, "prov-1", Status.PROVISIONING)  # instance up, runner not started yet
    beat(ctx, "prov-1", HEARTBEAT_STALE_S * 10)
    assert runner_alive(ctx, run) is None and not needs_teardown(ctx, run)


# -- end_unfinished ---------------------------------------------------------------------------


def test_a_run_whose_runner_died_fails_with_the_backends_reason(ctx: Context,
                                                                backend: FakeBackend) -> None:
    put(ctx, "gone-1")
    backend.gone_reason = "the instance was preempted"
    end_unfinished(ctx, "gone-1")
    run = load_run(ctx.store, "gone-1")
    assert run.status is Status.FAILED and run.finished_at
    assert run.message == "the runner stopped before the job finished: the instance was " \
                          "preempted"
    put(ctx, "gone-2", Status.UPLOADING)
    backend.gone_reason = None
    end_unfinished(ctx, "gone-2")
    assert load_run(ctx.store, "gone-2").message == "the runner stopped before the job finished"


def test_a_run_cut_short_while_provisioning_fails_so(ctx: Context) -> None:
    for status in (Status.SUBMITTED, Status.PROVISIONING):
        put(ctx, "cut-1", status, instance=False)
        end_unfinished(ctx, "cut-1")
        run = load_run(ctx.store, "cut-1")
        assert run.status is Status.FAILED
        assert run.message == ("provisioning did not finish: the dstack command that "
                               "submitted the run stopped")


def test_a_finished_or_missing_run_is_left_as_it_is(ctx: Context) -> None:
    put(ctx, "ok-1", Status.DONE, exit_code=0)
    before = ctx.store.get_json(run_key("ok-1"))
    end_unfinished(ctx, "ok-1")
    end_unfinished(ctx, "no-such-run")
    assert ctx.store.get_json(run_key("ok-1")) == before


# -- reconcile --------------------------------------------------------------------------------


def test_reconcile_tears_down_and_ends_what_needs_it_and_goes_on_after_a_failure(
        ctx: Context, backend: FakeBackend) -> None:
    put(ctx, "done-1", Status.DONE)
    put(ctx, "settled-1", Status.DONE, torn_down=True)
    put(ctx, "cut-1", Status.PROVISIONING, instance=False)
    put(ctx, "live-1", live_submitter=True)
    put(ctx, "broken-1", Status.FAILED)
    backend.failing = {"broken-1"}
    said: list[str] = []
    failed: list[str] = []
    assert sorted(reconcile(ctx, said.append, failed)) == ["cut-1", "done-1"]
    assert sorted(backend.torn) == ["cut-1", "done-1"]
    assert failed == ["broken-1"]
    assert any("could not destroy the stack of run broken-1" in m for m in said)
    assert load_run(ctx.store, "done-1").torn_down
    assert load_run(ctx.store, "cut-1").status is Status.FAILED
    assert not load_run(ctx.store, "broken-1").torn_down
    assert load_run(ctx.store, "live-1").status is Status.RUNNING


def test_reconcile_leaves_a_busy_stack_to_whoever_holds_it(ctx: Context,
                                                         backend: FakeBackend) -> None:
    put(ctx, "done-1", Status.DONE)
    backend.busy = {"done-1"}
    failed: list[str] = []
    assert reconcile(ctx, failed=failed) == [] and failed == []


# -- gc ---------------------------------------------------------------------------------------


def stack(name: str, resources: int = 3) -> StackInfo:
    return StackInfo(name=name, resource_count=resources)


def test_gc_destroys_stacks_no_live_run_owns(ctx: Context, backend: FakeBackend) -> None:
    put(ctx, "kept-1", Status.DONE, torn_down=True)  # its stack holds resources again
    put(ctx, "live-1", live_submitter=True)
    put(ctx, "empty-1", Status.DONE, torn_down=True)
    backend.listed = [stack("run-nobody-1"), stack("run-kept-1"), stack("run-live-1"),
                      stack("run-empty-1", resources=0), stack("workspace-test")]
    report = gc(ctx)
    assert report.ok and report.failed == [] and not report.unlisted
    assert sorted(report.orphans) == ["kept-1", "nobody-1"]
    assert sorted(backend.torn) == ["kept-1", "nobody-1"]
    with pytest.raises(NotFoundError):
        load_run(ctx.store, "nobody-1")  # an orphan without a record gets none


def test_gc_reports_locks_finished_runs_and_unused_code(ctx: Context, store: LocalStore,
                                                       backend: FakeBackend) -> None:
    used, unused = "a" * 64, "b" * 64
    put(ctx, "done-1", Status.DONE, code=used)
    for sha in (used, unused):
        ctx.store.put_bytes(code_key(sha), b"archive")
        old = time.time() - 10 * 24 * 3600
        os.utime(store.root / code_key(sha), (old, old))  # older than gc's grace period
    backend.locks = ["run-done-1"]
    report = gc(ctx)
    assert report.locks == ["run-done-1"] and report.torn_down == ["done-1"]
    assert report.code == [code_key(unused)] and report.ok


def test_gc_reports_what_it_could_not_do(ctx: Context, backend: FakeBackend) -> None:
    put(ctx, "broken-1", Status.DONE)
    backend.failing = {"broken-1", "stray-1"}
    backend.listed = [stack("run-broken-1"), stack("run-stray-1")]
    report = gc(ctx)
    assert report.failed == ["broken-1", "stray-1"]  # broken-1 is tried once, not twice
    assert not report.ok and not report.unlisted and report.orphans == []
    backend.failing, backend.list_fails = set(), True
    said: list[str] = []
    report = gc(ctx, said.append)
    assert report.unlisted and not report.ok and report.failed == []
    assert report.torn_down == ["broken-1"]  # the runs' own stacks are still torn down
    assert any("could not look for orphan stacks" in m for m in said)


def test_gc_leaves_a_busy_orphan_alone_without_calling_it_a_failure(
        ctx: Context, backend: FakeBackend) -> None:
    backend.listed, backend.busy = [stack("run-stray-1")], {"stray-1"}
    said: list[str] = []
    report = gc(ctx, said.append)
    assert report.ok and report.orphans == []
    assert "stack run-stray-1 is busy; left alone" in said


def test_left_behind_is_the_orphan_rule(ctx: Context) -> None:
    assert lifecycle.left_behind(ctx, None)
    assert lifecycle.left_behind(ctx, put(ctx, "kept-1", Status.DONE, torn_down=True))
    assert not lifecycle.left_behind(ctx, put(ctx, "live-1", live_submitter=True))


# -- runs of another machine (a team's shared state) -------------------------------------------


ELSEWHERE = {"host": "teammates-laptop", "pid": 1, "start_ticks": 1}
"""The submitter of a run started on another machine: its pid means nothing here."""


def test_another_machines_live_run_is_left_alone_until_its_heartbeat_is_stale(
        ctx: Context, backend: FakeBackend) -> None:
    run = put(ctx, "theirs-1", submitter=ELSEWHERE, owner="arn:aws:iam::1:user/alice")
    beat(ctx, "theirs-1", 5)
    report = gc(ctx)
    assert backend.torn == [] and report.elsewhere == ["theirs-1"]
    beat(ctx, "theirs-1", HEARTBEAT_STALE_S + 5)
    assert needs_teardown(ctx, run)
    assert gc(ctx).torn_down == ["theirs-1"] and backend.torn == ["theirs-1"]


def test_the_profiles_heartbeat_timeout_is_the_limit(ctx: Context) -> None:
    run = put(ctx, "theirs-1", submitter=ELSEWHERE)
    beat(ctx, "theirs-1", 30)
    assert not needs_teardown(ctx, run)
    ctx.profile = ctx.profile.model_copy(update={"settings": {"heartbeat_timeout": "20s"}})
    assert needs_teardown(ctx, run)


def test_another_machines_run_being_provisioned_is_not_torn_down_while_young(
        ctx: Context) -> None:
    young = put(ctx, "prov-1", Status.PROVISIONING, instance=False, submitter=ELSEWHERE,
                submitted_at=now())
    assert not needs_teardown(ctx, young)  # its CLI there may be bringing it up right now
    old = put(ctx, "prov-2", Status.PROVISIONING, instance=False, submitter=ELSEWHERE)
    assert needs_teardown(ctx, old)  # submitted longer ago than lock_timeout


def test_gc_asks_whether_a_locked_stacks_run_is_gone(ctx: Context,
                                                      backend: FakeBackend) -> None:
    put(ctx, "live-1", submitter=ELSEWHERE)
    beat(ctx, "live-1", 1)
    put(ctx, "dead-1", submitter=ELSEWHERE)
    beat(ctx, "dead-1", HEARTBEAT_STALE_S * 2)
    put(ctx, "done-1", Status.DONE, submitter=ELSEWHERE)
    backend.lock_stacks = ["run-live-1", "run-dead-1", "run-done-1", "run-nobody-1",
                           "workspace-test"]
    gc(ctx)
    assert backend.asked_about == {"run-live-1": False, "run-dead-1": True,
                                   "run-done-1": True, "run-nobody-1": True,
                                   "workspace-test": False}

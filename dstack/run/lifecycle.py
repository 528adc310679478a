"""The life cycle of runs: provision, stop, tear down, and repair after a crash.

Nothing may outlive a run: whichever dstack command next sees a finished run whose stack
still holds resources tears it down (`reconcile`), and `gc` also destroys stacks no run
owns and clears engine locks whose process is gone.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime

from dstack.config.backends import ResourceChange
from dstack.config.profiles import duration_setting
from dstack.errors import (
    BackendError,
    DstackError,
    NotFoundError,
    StackBusyError,
    StoreError,
    UsageError,
)
from dstack.interrupts import deferred_sigint
from dstack.procs import process_alive, process_start_ticks, shell_exit_code
from dstack.run.audit import record_update
from dstack.run.billing import priced_fields
from dstack.run.context import Context, Say, quiet
from dstack.run.cost import closed_billing
from dstack.run.listing import run_docs, unsettled_docs
from dstack.run.record import (
    RunRecord,
    Status,
    load_run,
    run_stack_name,
    update_run,
)
from dstack.store.keys import heartbeat_key, run_prefix, stop_key


def submitter() -> dict[str, object]:
    """Who submits a run: this host and process, so others can tell if it is gone."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "start_ticks": process_start_ticks(os.getpid())}


def submitter_alive(run: RunRecord) -> bool:
    """Whether the CLI that submitted `run` still runs (False when it is on another host)."""
    sub = run.submitter
    if not on_this_host(run) or not sub.get("pid"):
        return False
    return process_alive(int(sub["pid"]), sub.get("start_ticks"))


def on_this_host(run: RunRecord) -> bool:
    """Whether `run` was submitted from this machine (its CLI's pid means something here)."""
    return run.submitter.get("host") == socket.gethostname()


def provision(ctx: Context, run: RunRecord, say: Say = quiet) -> RunRecord:
    """Bring up the run's stack; on failure tear it down again and mark the run failed.

    Ctrl-C does not cut the update short: it is deferred, and then stops the run.
    """
    run = update_run(ctx.store, run.name, status=Status.PROVISIONING.value)
    say(f"provisioning stack {run.stack}")
    with deferred_sigint(say, "Ctrl-C: the job stops as soon as its stack is up") as interrupted:
        try:
            changes, instance = ctx.backend.provision(run, ctx.backend.bootstrap(run))
            created_at = record_update(ctx.store, run.name, "up", changes)
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, DstackError) else repr(exc)
            update_run(ctx.store, run.name, status=Status.FAILED.value,
                       message=f"provisioning failed: {reason}")
            teardown(ctx, run.name, say)
            raise
    if interrupted.count:
        request_stop(ctx, run.name)
    say(f"created {', '.join(c.name for c in changes if c.op == 'create') or 'nothing'}")
    return update_run(ctx.store, run.name, instance=instance,
                      **priced_fields(instance, created_at))


def teardown(ctx: Context, run_name: str, say: Say = quiet, wait_s: float = 120.0) -> bool:
    """Destroy the run's stack (keeping its history) and record it; True when done here.

    When another process holds the stack's lock (it is tearing it down too), wait for it; a
    lock whose engine process is gone is cleared at once.
    """
    deadline = time.monotonic() + wait_s
    repaired = False
    while True:
        try:
            with deferred_sigint(say, "Ctrl-C: the stack is being destroyed; one moment"):
                changes: list[ResourceChange] = ctx.backend.teardown(run_name)
            break
        except StackBusyError:
            if _cleared_stale_lock(ctx, run_name, say):
                continue
            try:
                if load_run(ctx.store, run_name).torn_down:
                    return False
            except NotFoundError:
                pass
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        except BackendError:
            # An engine killed while saving a checkpoint leaves the stack unreadable (the
            # engine reads it before it looks at the lock): repaired as its lock is cleared.
            if repaired or not _cleared_stale_lock(ctx, run_name, say):
                raise
            repaired = True
    record_update(ctx.store, run_name, "destroy", changes)
    if changes:
        say(f"destroyed stack {run_stack_name(run_name)} ({len(changes)} resource(s))")
    with contextlib.suppress(NotFoundError):
        update_run(ctx.store, run_name, torn_down=True, **closed_billing(ctx.store, run_name))
    return True


def _cleared_stale_lock(ctx: Context, run_name: str, say: Say) -> bool:
    """Whether the run's stack had a lock of a dead engine, now cleared (and its stack
    repaired)."""
    stack = run_stack_name(run_name)
    if stack not in ctx.backend.clear_stale_locks(lambda s: stack_run_gone(ctx, s)):
        return False
    say(f"cleared the lock a dead engine left on stack {stack}")
    return True


def request_stop(ctx: Context, run_name: str, abort: bool = False) -> None:
    """Ask the runner to stop the job (`abort`: without the final artifact sync)."""
    ctx.store.put_json(stop_key(run_name), {"abort": abort, "at": time.time()})


def wait_finished(ctx: Context, run_name: str, timeout_s: float, poll_s: float = 0.2) -> RunRecord:
    """Poll the run until it has a terminal status, the runner dies, or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = load_run(ctx.store, run_name)
        if run.status.finished or time.monotonic() > deadline:
            return run
        if run.status in (Status.RUNNING, Status.UPLOADING) and \
                runner_alive(ctx, run) is False:
            return load_run(ctx.store, run_name)
        time.sleep(poll_s)


def stop(ctx: Context, run_name: str, abort: bool = False, say: Say = quiet,
         timeout_s: float = 60.0) -> RunRecord:
    """Stop a run and tear down its stack; return its final record."""
    run = load_run(ctx.store, run_name)
    if not run.status.finished:
        request_stop(ctx, run_name, abort)
        say("abort requested" if abort else "stop requested; saving artifacts")
        if run.status in (Status.RUNNING, Status.UPLOADING):
            run = wait_finished(ctx, run_name, timeout_s)
    if not run.torn_down:
        teardown(ctx, run_name, say)
    final = load_run(ctx.store, run_name)
    if not final.status.finished:
        # The runner never took the request (it was gone or never started): end the run.
        final = update_run(ctx.store, run_name,
                           status=(Status.ABORTED if abort else Status.STOPPED).value,
                           message="stopped before the job started")
    return final


def last_beat(ctx: Context, run: RunRecord) -> float:
    """When the run's runner last beat (epoch seconds): its heartbeat in the store, else when
    the run started or was submitted."""
    try:
        return float(ctx.store.get_json(heartbeat_key(run.name)).get("at", 0))
    except (NotFoundError, StoreError, ValueError):
        return datetime.fromisoformat(run.started_at or run.submitted_at).timestamp()


def runner_alive(ctx: Context, run: RunRecord) -> bool | None:
    """Whether the run's runner still runs: the backend's answer, else its heartbeat in the
    store, fresher than the profile's `heartbeat_timeout` (a cloud instance that died without
    a final status stops beating)."""
    alive = ctx.backend.runner_alive(run)
    if alive is not None or run.status not in (Status.RUNNING, Status.UPLOADING):
        return alive
    return time.time() - last_beat(ctx, run) < duration_setting(ctx.profile, "heartbeat_timeout")


def stack_run_gone(ctx: Context, stack: str) -> bool:
    """Whether the run behind `stack` is gone, so that another machine's lock on it may be
    cleared once it is old: the run finished, or its runner stopped beating. A stack of no
    run (a workspace) is never gone."""
    if not stack.startswith("run-"):
        return False
    try:
        run = load_run(ctx.store, stack[len("run-"):])
    except (NotFoundError, UsageError):
        return True
    return run.status.finished or runner_alive(ctx, run) is False


def needs_teardown(ctx: Context, run: RunRecord) -> bool:
    """Whether `run` has a stack that should be destroyed now."""
    if run.torn_down:
        return False
    if not run.detached and submitter_alive(run):
        return False  # its own CLI is watching it and will tear it down
    if run.status.finished:
        return True
    if run.status in (Status.SUBMITTED, Status.PROVISIONING) and not run.instance:
        if not on_this_host(run):  # another machine's CLI may be bringing it up right now
            age = time.time() - datetime.fromisoformat(run.submitted_at).timestamp()
            return age > duration_setting(ctx.profile, "lock_timeout")
        return not submitter_alive(run)  # its stack is not up (yet): was its CLI cut short?
    return runner_alive(ctx, run) is False


def end_unfinished(ctx: Context, run_name: str) -> None:
    """After the stack of a run without a terminal status was destroyed: the run failed.

    That is a run whose submitting CLI died before its stack was up, or whose runner died
    without ending it (the salvage on teardown ends it when the stack knew the runner).
    """
    with contextlib.suppress(NotFoundError):
        run = load_run(ctx.store, run_name)
        if run.status.finished:
            return
        if run.status in (Status.RUNNING, Status.UPLOADING):
            reason = ctx.backend.runner_gone_reason(run)
            message = "the runner stopped before the job finished" + \
                (f": {reason}" if reason else "")
        else:
            message = ("provisioning did not finish: the dstack command that submitted the "
                       "run stopped")
        update_run(ctx.store, run_name, status=Status.FAILED.value, message=message)


def close_run(ctx: Context, run_name: str, say: Say = quiet) -> None:
    """Destroy the stack of a run that ended (or whose runner is gone), waiting for a busy
    one, and end the run if it has no terminal status (`end_unfinished`): what a command
    that followed the run to its end does."""
    teardown(ctx, run_name, say)
    end_unfinished(ctx, run_name)


def reconcile(ctx: Context, say: Say = quiet, failed: list[str] | None = None,
              elsewhere: list[RunRecord] | None = None) -> list[str]:
    """Tear down every run that finished (or whose runner or CLI died); return their names.

    A run whose stack cannot be destroyed now is reported through `say` and appended to
    `failed`, and the others go on: housekeeping never blocks the command that does it.
    Live runs another machine started, left alone, are appended to `elsewhere`.
    """
    done = []
    for doc in unsettled_docs(ctx.store, ctx.listing_cache):  # a settled run is never read
        run = RunRecord.model_validate(doc)
        if not needs_teardown(ctx, run):
            if elsewhere is not None and not run.torn_down and not on_this_host(run):
                elsewhere.append(run)
        elif _try_teardown(ctx, run.name, say, failed):
            done.append(run.name)
            end_unfinished(ctx, run.name)
    return done


def _try_teardown(ctx: Context, run_name: str, say: Say, failed: list[str] | None,
                  note_busy: bool = False) -> bool:
    """`teardown` without waiting for a busy stack; False when it is busy or fails."""
    try:
        return teardown(ctx, run_name, say, wait_s=0)
    except StackBusyError:
        if note_busy:
            say(f"stack {run_stack_name(run_name)} is busy; left alone")
        return False
    except BackendError as exc:
        say(f"could not destroy the stack of run {run_name} now: {exc.message}; "
            "`dstack gc` tries again")
        if failed is not None:
            failed.append(run_name)
        return False


def open_reconciled(profile_name: str | None, say: Say = quiet) -> Context:
    """The context of `profile_name` (or the default profile), after tearing down whatever
    finished or crashed runs left behind. Housekeeping only: when the store cannot be read,
    the command that goes on to read it says so."""
    ctx = Context.open(profile_name)
    with contextlib.suppress(StoreError):
        reconcile(ctx, say)
    return ctx


@dataclass
class GcReport:
    """What `gc` did, and what it could not do (each also said as it happened)."""

    locks: list[str] = field(default_factory=list)
    """Stacks whose lock, left by a dead engine, was cleared."""
    torn_down: list[str] = field(default_factory=list)
    """Runs that had finished (or whose runner or CLI died) whose stacks were destroyed."""
    orphans: list[str] = field(default_factory=list)
    """Runs whose stack still held resources no live run needs, now destroyed."""
    code: list[str] = field(default_factory=list)
    """Code archives no run refers to, removed."""
    failed: list[str] = field(default_factory=list)
    """Runs whose stack could not be destroyed."""
    elsewhere: list[str] = field(default_factory=list)
    """Live runs another machine started (their runner still beats), left alone."""
    unlisted: bool = False
    """Whether the state backend's stacks could not be listed (no orphan was looked for)."""

    @property
    def ok(self) -> bool:
        """Whether gc did everything it set out to do."""
        return not self.failed and not self.unlisted


def left_behind(ctx: Context, run: RunRecord | None) -> bool:
    """Whether a run stack that holds resources should be destroyed: no run owns it, its run
    was torn down already (so they outlived it), or its run needs tearing down."""
    return run is None or run.torn_down or needs_teardown(ctx, run)


def gc(ctx: Context, say: Say = quiet) -> GcReport:
    """Repair everything a crashed CLI may have left: locks, finished runs, orphan stacks;
    and remove the code archives no run refers to any more."""
    from dstack.code.uploads import remove_unused_code  # only gc needs it: imported then

    report = GcReport(locks=ctx.backend.clear_stale_locks(lambda s: stack_run_gone(ctx, s)))
    for stack in report.locks:
        say(f"cleared a stale lock on stack {stack}")
    failed = report.failed
    alive_elsewhere: list[RunRecord] = []
    report.torn_down = reconcile(ctx, say, failed, alive_elsewhere)
    runs = {r["name"]: RunRecord.model_validate(r) for r in run_docs(ctx.store)}
    for live in alive_elsewhere:
        report.elsewhere.append(live.name)
        beat = int(time.time() - last_beat(ctx, live))
        state = (f"its runner beat {beat}s ago" if live.status in
                 (Status.RUNNING, Status.UPLOADING) else f"it is {live.status.value}")
        say(f"run {live.name} of {live.owner or 'an unknown owner'} (started on "
            f"{live.submitter.get('host', 'another machine')}) is alive: {state}; "
            "left alone")
    try:
        stacks = ctx.backend.stacks()
    except BackendError as exc:
        say(f"could not look for orphan stacks: {exc}")
        stacks = []
        report.unlisted = True
    for info in stacks:
        if not info.name.startswith("run-") or info.resource_count == 0:
            continue
        name = info.name[len("run-"):]
        run = runs.get(name)
        if name in failed:
            continue
        if left_behind(ctx, run):
            if not _try_teardown(ctx, name, say, failed, note_busy=True):
                continue
            report.orphans.append(name)
            if run is not None:
                end_unfinished(ctx, name)
    report.code = remove_unused_code(ctx.store, {r.code for r in runs.values() if r.code})
    return report


def exit_code(run: RunRecord) -> int:
    """What `dstack run` exits with: the job's code, 128+N for a signal, 1 otherwise."""
    if run.status is Status.DONE:
        return 0
    code = run.exit_code
    if code is None or code == 0:
        return 130 if run.status in (Status.STOPPED, Status.ABORTED) else 1
    return shell_exit_code(code)


def remove_run(ctx: Context, run_name: str) -> None:
    """Delete a finished, untagged run's record, logs and artifacts (its stack history
    stays)."""
    from dstack.run.tags import tags_of

    run = load_run(ctx.store, run_name)
    if not run.status.finished:
        raise UsageError(f"run {run_name} is {run.status.value}",
                         f"Stop it first: `dstack stop {run_name}`.")
    tags = tags_of(ctx.store, ctx.listing_cache).get(run_name, [])
    if tags:
        raise UsageError(f"run {run_name} is tagged ({', '.join(tags)}); its artifacts are "
                         "in use", "Delete the tag(s) first: `dstack tags delete TAG`.")
    if not run.torn_down:
        teardown(ctx, run_name)
    ctx.store.delete_prefix(run_prefix(run_name))

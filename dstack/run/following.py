"""Following a run: its log records and status changes as they come, and `attach`, which
follows a run to its end and tears it down (Ctrl-C stops the job, twice aborts it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dstack.interrupts import Deferred
from dstack.run.context import Context, Say, quiet
from dstack.run.lifecycle import close_run, request_stop, runner_alive
from dstack.run.record import (
    RunRecord,
    Status,
    load_run,
)
from dstack.store.job_log import WriteLog, read_log_records


@dataclass
class Cursor:
    """How far a follower has read a run: log chunks, status, app URLs shown."""

    seq: int = 0
    status: Status | None = None
    shown: set[str] = field(default_factory=set)


def follow(ctx: Context, run_name: str, write: WriteLog, say: Say = quiet,
           poll_s: float | None = None, until_finished: bool = True,
           cursor: Cursor | None = None,
           interrupted: Callable[[], bool] = lambda: False) -> RunRecord:
    """Stream the run's log records to `write` (and status changes and app URLs to `say`).

    Returns when the run has finished (or at once after the current log when
    `until_finished` is false), when its runner is gone, or when `interrupted()` says so.
    `cursor` keeps the position across calls. It looks every `poll_s` (default: what the
    run's store says, `Store.poll_s`).
    """
    at = cursor or Cursor()
    poll_s = ctx.store.poll_s if poll_s is None else poll_s
    while True:
        write_new_records(ctx, run_name, at, write)
        run = load_run(ctx.store, run_name)
        if run.status is not at.status:
            at.status = run.status
            if at.status in (Status.RUNNING, Status.UPLOADING):
                say(f"{run.name} is {at.status.value}")
        for app in run.apps:
            if app.url not in at.shown:
                at.shown.add(app.url)
                say(f"{app.name} is at {ctx.backend.app_address(run, app)}")
        if run.status.finished or not until_finished:
            write_new_records(ctx, run_name, at, write)
            return run
        if interrupted() or (run.status in (Status.RUNNING, Status.UPLOADING) and
                             runner_alive(ctx, run) is False):
            return load_run(ctx.store, run_name)
        time.sleep(poll_s)


def write_new_records(ctx: Context, run_name: str, at: Cursor, write: WriteLog) -> None:
    """The log records after `at`, to `write`; `at` moves past them."""
    records, at.seq = read_log_records(ctx.store, run_name, at.seq)
    for stream, data in records:
        write(stream, data)


def attach(ctx: Context, run_name: str, write: WriteLog,
           say: Say = quiet, interrupts: Deferred | None = None,
           cursor: Cursor | None = None) -> RunRecord:
    """Follow a run to its end, then tear it down; return the final record.

    Ctrl-C (counted in `interrupts`, from `deferred_sigint` around the submission and this
    call) stops the job, saving its artifacts; a second one aborts it.
    """
    got = interrupts or Deferred()
    handled = Deferred()
    cursor = cursor or Cursor()
    while True:
        run = follow(ctx, run_name, write, say, cursor=cursor,
                     interrupted=lambda: got.count > handled.count)
        if got.count > handled.count and not run.status.finished:
            handled.count = got.count
            abort = handled.count > 1
            say("aborting" if abort else "stopping the job and saving its artifacts "
                "(Ctrl-C again to abort)")
            request_stop(ctx, run_name, abort=abort)
            continue
        break
    close_run(ctx, run_name, say)  # a runner that died with its instance said nothing
    return load_run(ctx.store, run_name)

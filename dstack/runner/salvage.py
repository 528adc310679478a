"""What is left of a run whose runner is gone: its artifacts are saved from its workspace and
the run ends, failed, if it had not ended (called as the run's compute is torn down).

A run that ended — every run whose runner finished its job — is told from its document's
status alone, so tearing it down loads neither the record's model nor the sync code.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from dstack.errors import DstackError, StoreError
from dstack.run.status import Status
from dstack.store.base import open_store
from dstack.store.keys import run_key


def salvage(store_url: str, run_name: str, workdir: Path) -> None:
    """After the runner is gone: save what its job wrote and end the run if it had not ended.

    Called when a run's compute is torn down, so a runner killed by a signal, a crash or a
    lost machine still leaves its artifacts and a terminal status behind.
    """
    store = open_store(store_url)
    try:
        if Status(store.get_json(run_key(run_name)).get("status")).finished:
            return
    except (DstackError, ValueError):
        return
    from dstack.run.record import load_run, update_run  # here: only an unfinished run
    from dstack.store.artifact_sync import ArtifactSync
    from dstack.store.job_log import LogShipper

    try:
        run = load_run(store, run_name)
    except DstackError:
        return
    if run.status.finished:
        return
    repo = workdir / "repo"
    message = "the runner stopped before the job finished"
    if repo.is_dir():
        sync = ArtifactSync(store, run_name, repo, [a.path for a in run.job.artifacts])
        try:
            sync.sync()
            message += f"; {sync.files} artifact file(s) saved from its workspace"
        except (StoreError, OSError) as exc:
            message += f"; saving its artifacts failed: {exc}"
    log = LogShipper(store, run_name)
    log.say(f"error: {message}")
    with contextlib.suppress(StoreError):
        log.flush()
    update_run(store, run_name, status=Status.FAILED.value, message=message)

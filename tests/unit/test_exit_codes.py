"""Exit codes as a shell shows them: 128+N for a job that signal N ended, in the runner's
final status line and the run's message as in `dstack run`'s own exit code."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from dstack.procs import describe_exit, shell_exit_code
from dstack.run.job import Job
from dstack.run.lifecycle import exit_code
from dstack.run.record import RunRecord, Status, load_run, run_key
from dstack.runner.job_runner import Runner, job_message
from dstack.store.artifact_sync import ArtifactSync
from dstack.store.job_log import read_log_text
from dstack.store.local import LocalStore


@pytest.mark.parametrize(("code", "shell", "text"), [
    (0, 0, "exit code 0"),
    (3, 3, "exit code 3"),
    (-signal.SIGTERM, 143, "exit code 143, signal SIGTERM"),
    (-signal.SIGKILL, 137, "exit code 137, signal SIGKILL"),
    (-signal.SIGINT, 130, "exit code 130, signal SIGINT"),
])
def test_a_signal_is_128_plus_its_number(code: int, shell: int, text: str) -> None:
    assert shell_exit_code(code) == shell
    assert describe_exit(code) == text


def _runner(tmp_path: Path) -> tuple[LocalStore, Runner]:
    store = LocalStore(tmp_path / "store")
    record = RunRecord(name="brave-otter-1", provider="bash", profile="local", backend="local",
                       job=Job(provider="bash"), stack="run-brave-otter-1",
                       status=Status.RUNNING)
    store.put_json(run_key(record.name), record.model_dump(mode="json"))
    (tmp_path / "work").mkdir()
    return store, Runner(store, record, tmp_path / "work", tmp_path / "cache")


@pytest.mark.parametrize(("status", "code", "line"), [
    (Status.STOPPED, -signal.SIGTERM, "run stopped (exit code 143, signal SIGTERM)"),
    (Status.FAILED, -signal.SIGKILL, "run failed (exit code 137, signal SIGKILL)"),
    (Status.FAILED, 2, "run failed (exit code 2)"),
])
def test_the_final_status_line_shows_the_shell_exit_code(
        tmp_path: Path, status: Status, code: int, line: str) -> None:
    # Ctrl-C during provisioning stops the job with SIGTERM: it said `exit code -15`.
    store, runner = _runner(tmp_path)
    sync = ArtifactSync(store, "brave-otter-1", tmp_path / "work" / "repo", [])
    runner._finish(status, code, job_message(code), sync, final_sync=False)
    log = read_log_text(store, "brave-otter-1").decode()
    assert line in log and "exit code -" not in log, log
    record = load_run(store, "brave-otter-1")
    assert record.exit_code == code  # the record keeps the raw code; `dstack run` exits 128+N
    assert exit_code(record) == shell_exit_code(code)


def test_the_message_of_a_job_a_signal_ended_names_the_signal() -> None:
    assert job_message(0) is None
    assert job_message(1) == "the job exited with 1"
    assert job_message(-signal.SIGKILL) == "the job was ended by signal SIGKILL (exit code 137)"

"""Controlling runs on the local backend through the installed `dstack` command: detached
runs, artifacts of running jobs, stop versus abort, Ctrl-C, and repair by `gc` and `ps`."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from dstack.procs import process_alive
from dstack.store.job_log import read_log_text
from dstack.store.local import LocalStore

from .harness import TERMINAL, Dstack, poll, write_project

pytestmark = pytest.mark.engine

WORKFLOWS = """
workflows:
  - name: slow
    provider: python
    file: slow.py
    artifacts: ["out"]
  - name: trap
    provider: bash
    commands:
      - mkdir -p out
      - "trap 'echo saved > out/final.txt; exit 0' TERM"
      - echo started > out/started.txt
      - echo ready
      - while true; do sleep 0.1; done
    artifacts: ["out"]
  - name: slow-trap
    provider: bash
    commands:
      - mkdir -p out
      - "trap 'touch stopping; sleep 8; echo saved > out/final.txt; exit 0' TERM"
      - echo ready
      - while true; do sleep 0.1; done
    artifacts: ["out"]
  - name: quick
    provider: bash
    commands: ["echo quick"]
"""

FILES = {
    "slow.py": """
        import json, os, time
        os.makedirs("out", exist_ok=True)
        with open("early.tmp", "w") as f:
            json.dump({"t": time.time(), "pid": os.getpid()}, f)
        os.replace("early.tmp", "out/early.json")
        print("early written", flush=True)
        while True:
            time.sleep(0.1)
    """,
}


@pytest.fixture(scope="module")
def dstack(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Dstack:
    """The project of this module, with a dstack home shared by its tests."""
    project = write_project(tmp_path_factory.mktemp("project"), WORKFLOWS, FILES)
    return Dstack(module_home, project)


def _json_file(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    return process_alive(pid, None)


def _submitted(stderr: str) -> str:
    match = re.search(r"run (\S+) submitted", stderr)
    assert match, stderr
    return match.group(1)


def _holds_runner(dstack: Dstack, run: str) -> bool:
    return any(t.endswith("RunnerProcess") for t in dstack.stack_resource_types(run))


@pytest.mark.timeout(180)
def test_artifact_of_a_running_detached_job_then_stop(dstack: Dstack) -> None:
    run = dstack.run_detached("slow")
    early = poll("out/early.json in the store", lambda: _json_file(
        dstack.artifact(run, "out/early.json")), timeout=90, every=0.05)
    # In the store while the job still runs (how soon is measured by `make bench`, not
    # asserted here: a loaded machine once took 5 s).
    assert dstack.record(run)["status"] == "running"
    assert _holds_runner(dstack, run)
    [row] = dstack.ps(run)
    assert row["status"] == "running"

    proc = dstack("stop", run, "-y")
    assert f"{run} stopped" in proc.stderr
    [row] = dstack.ps(run)
    assert row["status"] == "stopped"
    dstack.assert_torn_down(run)
    assert not _alive(early["pid"])
    assert dstack.artifact(run, "out/early.json").is_file()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("abort", [False, True], ids=["stop", "abort"])
def test_stop_saves_what_the_job_writes_on_sigterm_abort_does_not(
        dstack: Dstack, abort: bool) -> None:
    run = dstack.run_detached("trap")
    poll("out/started.txt in the store",
         lambda: dstack.artifact(run, "out/started.txt").is_file(), timeout=90)

    dstack("stop", run, *(["--abort"] if abort else []), "-y")
    [row] = dstack.ps(run)
    files = {f["path"] for f in dstack.json("artifacts", "list", run)["files"]}
    if abort:
        assert row["status"] == "aborted"
        assert files == {"out/started.txt"}
    else:
        assert row["status"] == "stopped"
        assert files == {"out/started.txt", "out/final.txt"}
        assert dstack.artifact(run, "out/final.txt").read_text() == "saved\n"
    dstack.assert_torn_down(run)


@pytest.mark.timeout(180)
def test_gc_spares_a_live_detached_run_and_repairs_a_crashed_one(dstack: Dstack) -> None:
    run = dstack.run_detached("slow")
    early = poll("out/early.json in the store", lambda: _json_file(
        dstack.artifact(run, "out/early.json")), timeout=90)

    proc = dstack("gc")
    assert "0 finished run(s), 0 orphan stack(s)" in proc.stderr
    record = dstack.record(run)
    assert record["status"] == "running" and not record["torn_down"]
    assert _holds_runner(dstack, run)
    runner = int(record["instance"]["pid"])
    assert _alive(runner) and _alive(early["pid"])

    # The runner crashes; its job and stack are left behind until a dstack command sees it.
    os.kill(runner, signal.SIGKILL)
    poll("the runner to die", lambda: not _alive(runner), timeout=10)
    proc = dstack("gc")
    assert f"destroyed stack run-{run}" in proc.stderr
    assert "1 finished run(s)" in proc.stderr
    record = dstack.record(run)
    assert record["status"] == "failed"
    assert "runner stopped" in record["message"]
    dstack.assert_torn_down(run)
    poll("the orphaned job to be killed", lambda: not _alive(early["pid"]), timeout=10)
    assert dstack.artifact(run, "out/early.json").is_file()


@pytest.mark.timeout(180)
def test_a_finished_detached_run_is_torn_down_by_the_next_ps(dstack: Dstack) -> None:
    run = dstack.run_detached("quick")
    record = dstack.wait_record(run, TERMINAL, timeout=90)
    assert record["status"] == "done"
    assert record["torn_down"] is False
    assert _holds_runner(dstack, run)

    proc = dstack("ps")
    assert f"destroyed stack run-{run}" in proc.stderr
    assert run in proc.stdout
    dstack.assert_torn_down(run)
    assert b"quick" in read_log_text(LocalStore(dstack.home / "store"), run)


@pytest.mark.timeout(180)
def test_ctrl_c_stops_the_run_and_destroys_its_stack(dstack: Dstack, tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    proc = dstack.popen("run", "slow", out=out, err=err)
    try:
        poll("the job's first line", lambda: b"early written" in out.read_bytes(), timeout=90)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.read_text()
    # The job (python, killed by the runner's SIGTERM) ends with -15: dstack exits 128+15.
    assert rc == 128 + signal.SIGTERM, stderr
    run = _submitted(stderr)
    assert "stopping the job" in stderr
    [row] = dstack.ps(run)
    assert (row["status"], row["exit_code"]) == ("stopped", -signal.SIGTERM), row
    dstack.assert_torn_down(run)
    assert dstack.artifact(run, "out/early.json").is_file()


@pytest.mark.timeout(180)
def test_a_second_ctrl_c_aborts_a_job_that_is_slow_to_stop(
        dstack: Dstack, tmp_path: Path) -> None:
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    proc = dstack.popen("run", "slow-trap", out=out, err=err)
    try:
        poll("the job's first line", lambda: b"ready" in out.read_bytes(), timeout=90)
        proc.send_signal(signal.SIGINT)
        # Once the job got SIGTERM (its trap takes 8 s and touches a file in the run's
        # workspace first), abort.
        run = _submitted(err.read_text())
        stopping = dstack.home / "workdirs" / run / "work" / "repo" / "stopping"
        poll("the job to get SIGTERM", stopping.exists, timeout=30)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.read_text()
    assert rc != 0
    assert "aborting" in stderr
    [row] = dstack.ps(run)
    assert row["status"] == "aborted", row
    files = {f["path"] for f in dstack.json("artifacts", "list", run)["files"]}
    assert "out/final.txt" not in files
    dstack.assert_torn_down(run)

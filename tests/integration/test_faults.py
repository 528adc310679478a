"""Faults on the local backend, through the installed `dstack` command: the `dstack run` CLI
killed (SIGKILL) at each step of a run's life, the runner or the job killed, a store that
refuses writes during the sync, and engine locks left by dead (or held by live) processes.

After the next `dstack ps`, and again after `dstack gc`: no stack holds resources for a
finished run, no runner, job or engine process of the home is left, the run has a terminal
status that says what happened (or, when its job still runs, it goes on as a detached run
that `dstack stop` ends cleanly), and no lock of a dead engine remains.

The engine when its CLI dies: dstack starts the engine in a session of its own (so a Ctrl-C
reaches dstack, not the engine) with its output going to files (a pipe to a dead CLI would
kill it with SIGPIPE in the middle of saving a checkpoint), but the program of an
Automation-API stack runs inside the CLI's process. Killed, the CLI takes the program with
it: the engine cannot finish the update, records it as failed and ends. The behaviour tested
here: the engine does not outlive its CLI for long; the next dstack command clears a lock
only once the engine that holds it is gone, repairs the checkpoint a killed engine was
saving, kills what that engine left, destroys what the stack holds and ends the run
`failed`, saying why. A stack that still cannot be destroyed is reported, and blocks no
other command.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dstack.procs import process_alive
from dstack.store.job_log import read_log_text
from dstack.store.local import LocalStore

from .harness import TERMINAL, Dstack, check_no_leftovers, poll, write_project

pytestmark = pytest.mark.engine

MANY = 400
"""Files the `many` job writes at its end (its final sync takes a while)."""

WORKFLOWS = """
workflows:
  - name: quick
    provider: bash
    commands: ["mkdir -p out", "echo quick > out/q.txt"]
    artifacts: ["out"]
  - name: long
    provider: bash
    commands:
      - mkdir -p out
      - echo $$ > out/pid.txt
      - sleep 300 &
      - echo $! > out/child.txt
      - echo started
      - while true; do sleep 0.1; done
    artifacts: ["out"]
  - name: orphan
    provider: bash
    commands:
      - mkdir -p out
      - echo started > out/started.txt
      - "while kill -0 $PPID 2>/dev/null; do sleep 0.05; done"
      - echo written after the runner died > out/after.txt
      - while true; do sleep 0.1; done
    artifacts: ["out"]
  - name: many
    provider: python
    file: many.py
    artifacts: ["out"]
  - name: gated
    provider: bash
    commands:
      - mkdir -p out
      - echo a > out/a.txt
      - while [ ! -e go ]; do sleep 0.05; done
      - echo b > out/b.txt
    artifacts: ["out"]
"""

FILES = {
    "many.py": f"""
        import os
        os.makedirs("out/deep", exist_ok=True)
        for i in range({MANY}):
            with open(f"out/deep/f{{i:04d}}.bin", "wb") as f:
                f.write(bytes([i % 256]) * (64 * 1024))
        print("wrote {MANY} files", flush=True)
    """,
}


@pytest.fixture(scope="module")
def dstack(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Dstack:
    """The project of this module, with a dstack home shared by its tests."""
    project = write_project(tmp_path_factory.mktemp("project"), WORKFLOWS, FILES)
    return Dstack(module_home, project)


# -- looking at processes, locks and runs ----------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    return process_alive(pid, None)


def _engines(home: Path) -> list[tuple[int, list[str]]]:
    """Live engine processes of `home` (its `pulumi` binary), with their command lines."""
    prefix = str(home / "engine")
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        cmd = _cmdline(int(entry.name))
        if cmd and cmd[0].startswith(prefix) and _alive(int(entry.name)):
            found.append((int(entry.name), cmd))
    return found


def _lock_dir(home: Path, run: str) -> Path:
    return home / "state" / ".pulumi" / "locks" / "organization" / "dstack" / f"run-{run}"


def _locks(home: Path, run: str) -> list[Path]:
    """The engine locks on the run's stack."""
    folder = _lock_dir(home, run)
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def _lock_held_by(home: Path, run: str, command: str) -> bool:
    """Whether an engine running `pulumi <command>` holds the lock on the run's stack."""
    for lock in _locks(home, run):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if command in _cmdline(int(json.loads(lock.read_text())["pid"])):
                return True
    return False


def _status(dstack: Dstack, run: str) -> str | None:
    try:
        return str(dstack.record(run)["status"])
    except (OSError, ValueError):
        return None


def _log(dstack: Dstack, run: str) -> str:
    return read_log_text(LocalStore(dstack.home / "store"), run).decode(errors="replace")


def _kill_cli_when(dstack: Dstack, tmp_path: Path, args: list[str],
                   when: Callable[[str], bool], timeout: float = 120) -> str:
    """Start `dstack run ARGS`, SIGKILL it once `when(run)` holds; return the run's name."""
    before = dstack.run_names()
    out, err = tmp_path / "cli.out", tmp_path / "cli.err"
    proc = dstack.popen("run", *args, out=out, err=err)
    try:
        def ready() -> str | None:
            if proc.poll() is not None:
                pytest.fail(f"`dstack run` ended (exit {proc.returncode}) before the moment "
                            f"to kill it came:\n{err.read_text()}")
            new = dstack.run_names() - before
            run = next(iter(new), None)
            return run if run is not None and when(run) else None

        run: str = poll("the moment to kill the CLI", ready, timeout, every=0.005)
    finally:
        proc.kill()
        proc.wait()
    return run


def _settle(dstack: Dstack, timeout: float = 60) -> None:
    """Wait until no engine of the home runs: it must not outlive its killed CLI for long."""
    poll("the engine to end after its CLI was killed",
         lambda: not _engines(dstack.home), timeout, every=0.1)


def _assert_clean(dstack: Dstack, run: str) -> None:
    """Nothing of the run is left: its stack destroyed, no lock, no process of the home."""
    dstack.assert_torn_down(run)
    assert _locks(dstack.home, run) == []
    assert check_no_leftovers(dstack.home) == []


def _ps_then_gc(dstack: Dstack, run: str) -> dict[str, Any]:
    """`dstack ps`, check the repair; `dstack gc`, check it found nothing more to do."""
    dstack("ps")
    record = dstack.record(run)
    assert record["status"] in TERMINAL, record
    _assert_clean(dstack, run)
    proc = dstack("gc")
    assert "0 stale lock(s), 0 finished run(s), 0 orphan stack(s)" in proc.stderr, proc.stderr
    assert dstack.record(run) == record
    _assert_clean(dstack, run)
    return record


# -- the CLI killed at each step -------------------------------------------------------------


@pytest.mark.timeout(240)
def test_cli_killed_right_after_the_stack_is_created(dstack: Dstack, tmp_path: Path) -> None:
    run = _kill_cli_when(dstack, tmp_path, ["quick"],
                         lambda r: f"run-{r}" in dstack.stack_files())
    _settle(dstack)
    record = _ps_then_gc(dstack, run)
    # The update never got going: nothing ran, and the run says why it ended.
    assert record["status"] == "failed", record
    assert "provisioning" in record["message"], record
    assert not dstack.artifact(run, "out/q.txt").exists()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("moment", ["lock", "folder"])
def test_cli_killed_while_the_engine_brings_the_stack_up(
        dstack: Dstack, tmp_path: Path, moment: str) -> None:
    """`lock`: as soon as `pulumi up` holds the stack's lock; `folder`: once the run's
    workspace folder (its first resource) exists."""
    def when(run: str) -> bool:
        if moment == "folder" and not (dstack.home / "workdirs" / run).is_dir():
            return False
        return _lock_held_by(dstack.home, run, "up")

    run = _kill_cli_when(dstack, tmp_path, ["quick"], when)
    _settle(dstack)
    # The engine ended the update on its own terms: it is in the stack's history.
    history = json.loads(dstack.pulumi("stack", "history", "--stack", f"run-{run}",
                                       "--json").stdout)
    assert [u["kind"] for u in history] == ["update"], history
    record = _ps_then_gc(dstack, run)
    if record["status"] == "done":  # the runner had started: its job ran to its end
        assert dstack.artifact(run, "out/q.txt").read_text() == "quick\n"
    else:
        assert record["status"] == "failed", record
        assert "provisioning" in record["message"] or "runner" in record["message"], record


@pytest.mark.timeout(240)
def test_cli_killed_while_the_job_runs_leaves_a_detached_run_that_stops_cleanly(
        dstack: Dstack, tmp_path: Path) -> None:
    def running(run: str) -> bool:  # the job runs, and the CLI is past `up` (follows it)
        return dstack.artifact(run, "out/child.txt").is_file() and \
            bool(dstack.record(run)["instance"]) and not _engines(dstack.home)

    run = _kill_cli_when(dstack, tmp_path, ["long"], running)
    _settle(dstack)
    job = int(dstack.artifact(run, "out/pid.txt").read_text())
    runner = int(dstack.record(run)["instance"]["pid"])
    assert _alive(job) and _alive(runner)

    # Its CLI is gone but its job is not: the next command leaves it running.
    [row] = dstack.ps(run)
    assert row["status"] == "running", row
    assert not dstack.record(run)["torn_down"]
    assert _alive(job) and _alive(runner)
    dstack("gc")
    assert _status(dstack, run) == "running" and _alive(job)

    proc = dstack("stop", run, "-y")
    assert f"{run} stopped" in proc.stderr
    [row] = dstack.ps(run)
    assert row["status"] == "stopped", row
    _assert_clean(dstack, run)
    assert not _alive(job) and not _alive(runner)


@pytest.mark.timeout(240)
def test_cli_killed_while_the_engine_destroys_the_stack(dstack: Dstack, tmp_path: Path) -> None:
    def destroying(run: str) -> bool:
        return _status(dstack, run) in TERMINAL and _lock_held_by(dstack.home, run, "destroy")

    run = _kill_cli_when(dstack, tmp_path, ["quick"], destroying)
    _settle(dstack)
    record = _ps_then_gc(dstack, run)
    assert (record["status"], record["exit_code"]) == ("done", 0), record
    assert dstack.artifact(run, "out/q.txt").read_text() == "quick\n"
    kinds = [t["kind"] for t in dstack.json("audit", run)]
    assert kinds[0] == "up" and "destroy" in kinds[1:], kinds


def _assert_many_saved(dstack: Dstack, run: str) -> None:
    files = sorted((dstack.artifact(run, "out/deep")).glob("f*.bin"))
    assert len(files) == MANY
    for i, path in enumerate(files):
        assert path.read_bytes() == bytes([i % 256]) * (64 * 1024), path


@pytest.mark.timeout(240)
def test_cli_killed_while_the_artifacts_sync(dstack: Dstack, tmp_path: Path) -> None:
    run = _kill_cli_when(dstack, tmp_path, ["many"],
                         lambda r: _status(dstack, r) == "uploading")
    # The runner, not the CLI, syncs: it finishes the sync and the run.
    dstack.wait_record(run, TERMINAL, timeout=120)
    _settle(dstack)
    record = _ps_then_gc(dstack, run)
    assert (record["status"], record["exit_code"]) == ("done", 0), record
    _assert_many_saved(dstack, run)


# -- the runner and the job killed -----------------------------------------------------------


@pytest.mark.timeout(240)
def test_runner_killed_the_run_fails_with_everything_its_job_wrote(dstack: Dstack) -> None:
    run = dstack.run_detached("orphan")
    poll("out/started.txt in the store",
         lambda: dstack.artifact(run, "out/started.txt").is_file(), timeout=90)
    runner = int(dstack.record(run)["instance"]["pid"])
    os.kill(runner, signal.SIGKILL)
    # The job notices and writes one more file, which only the salvage can save.
    after = dstack.home / "workdirs" / run / "work" / "repo" / "out" / "after.txt"
    poll("the job's last file", after.is_file, timeout=30)

    record = _ps_then_gc(dstack, run)
    assert record["status"] == "failed", record
    assert "runner stopped" in record["message"], record
    assert dstack.artifact(run, "out/after.txt").read_text() == "written after the runner died\n"
    assert "runner stopped" in _log(dstack, run)


@pytest.mark.timeout(240)
def test_runner_killed_during_the_final_sync_salvage_saves_every_file(
        dstack: Dstack) -> None:
    run = dstack.run_detached("many")
    dstack.wait_record(run, ("uploading", *TERMINAL), timeout=90)
    runner = int(dstack.record(run)["instance"]["pid"])
    os.kill(runner, signal.SIGKILL)
    record = _ps_then_gc(dstack, run)
    if record["status"] == "done":  # pragma: no cover - the sync won the race with the kill
        pytest.skip("the runner finished its sync before it was killed")
    assert record["status"] == "failed", record
    assert "saved from its workspace" in record["message"], record
    _assert_many_saved(dstack, run)


@pytest.mark.timeout(240)
def test_job_killed_the_run_fails_with_its_code_and_leaves_no_child(dstack: Dstack) -> None:
    run = dstack.run_detached("long")
    poll("out/child.txt in the store",
         lambda: dstack.artifact(run, "out/child.txt").is_file(), timeout=90)
    job = int(dstack.artifact(run, "out/pid.txt").read_text())
    child = int(dstack.artifact(run, "out/child.txt").read_text())
    assert _alive(child)
    os.kill(job, signal.SIGKILL)
    record = dstack.wait_record(run, TERMINAL, timeout=60)
    assert (record["status"], record["exit_code"]) == ("failed", -signal.SIGKILL), record
    assert record["message"] == "the job was ended by signal SIGKILL (exit code 137)"
    # The runner ends the job's whole process group at once, not at the next dstack command.
    assert not _alive(child)
    record = _ps_then_gc(dstack, run)
    assert record["exit_code"] == -signal.SIGKILL


@pytest.mark.timeout(240)
def test_attached_run_of_a_killed_job_exits_128_plus_the_signal(
        dstack: Dstack, tmp_path: Path) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    before = dstack.run_names()
    proc = dstack.popen("run", "long", out=out, err=err)
    try:
        def job_pid() -> int | None:
            run = next(iter(dstack.run_names() - before), None)
            path = dstack.artifact(run, "out/pid.txt") if run else None
            return int(path.read_text()) if path and path.is_file() else None

        os.kill(poll("the job's pid", job_pid, timeout=90), signal.SIGKILL)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 128 + signal.SIGKILL, err.read_text()
    [run] = dstack.run_names() - before
    assert (dstack.record(run)["status"], dstack.record(run)["exit_code"]) == (
        "failed", -signal.SIGKILL)
    _assert_clean(dstack, run)


@pytest.mark.timeout(240)
def test_an_unwritable_store_during_the_sync_fails_the_run_and_says_so(
        dstack: Dstack, tmp_path: Path) -> None:
    out, err = tmp_path / "out", tmp_path / "err"
    before = dstack.run_names()
    proc = dstack.popen("run", "gated", out=out, err=err)
    try:
        def first_file() -> str | None:
            run = next(iter(dstack.run_names() - before), None)
            return run if run and dstack.artifact(run, "out/a.txt").is_file() else None

        run = poll("out/a.txt in the store", first_file, timeout=90)
        # The store cannot take the run's artifacts any more (we run as root, so chmod would
        # not stop a write): the artifacts folder becomes a file.
        artifacts = dstack.home / "store" / "runs" / run / "artifacts"
        subprocess.run(["rm", "-rf", str(artifacts)], check=True)
        artifacts.write_text("not a folder\n")
        (dstack.home / "workdirs" / run / "work" / "repo" / "go").touch()
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = err.read_text()
    assert rc == 1, stderr
    record = dstack.record(run)
    assert (record["status"], record["exit_code"]) == ("failed", 0), record
    assert record["message"].startswith("artifact sync failed"), record
    assert "out/b.txt" in record["message"], record
    assert f"{run} failed: artifact sync failed" in stderr
    assert "the final artifact sync failed" in _log(dstack, run)
    assert "Traceback" not in stderr + _log(dstack, run)
    _assert_clean(dstack, run)


# -- engine locks ----------------------------------------------------------------------------


def _plant_lock(home: Path, run: str, pid: int, host: str | None = None) -> Path:
    """A lock on the run's stack as the engine writes it, held by process `pid`."""
    folder = _lock_dir(home, run)
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / "00000000-dead-beef-0000-000000000000.json"
    lock.write_text(json.dumps({"pid": pid, "username": "root",
                                "hostname": host or socket.gethostname(),
                                "timestamp": "2024-01-01T00:00:00Z"}))
    return lock


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def _finished_detached(dstack: Dstack) -> str:
    """A detached `quick` run that finished but whose stack is still up (no command since)."""
    run = dstack.run_detached("quick")
    assert dstack.wait_record(run, TERMINAL, timeout=90)["status"] == "done"
    assert dstack.stack_resource_types(run)
    return run


@pytest.mark.timeout(240)
def test_a_lock_of_a_dead_engine_is_cleared_by_the_next_command(dstack: Dstack) -> None:
    run = _finished_detached(dstack)
    lock = _plant_lock(dstack.home, run, _dead_pid())
    proc = dstack("ps", timeout=60)
    assert f"destroyed stack run-{run}" in proc.stderr
    assert not lock.exists()
    _ps_then_gc(dstack, run)


@pytest.mark.timeout(240)
def test_a_lock_held_by_a_live_process_is_never_removed(dstack: Dstack) -> None:
    run = _finished_detached(dstack)
    holder = subprocess.Popen(["sleep", "300"])
    try:
        lock = _plant_lock(dstack.home, run, holder.pid)
        t0 = time.monotonic()
        dstack("ps", timeout=60)
        proc = dstack("gc", timeout=60)
        assert time.monotonic() - t0 < 45, "ps and gc waited for the lock"
        assert "0 stale lock(s)" in proc.stderr
        assert f"stack run-{run} is busy; left alone" in proc.stderr
        assert lock.exists()
        assert dstack.stack_resource_types(run), "the locked stack was destroyed"
        assert not dstack.record(run)["torn_down"]
    finally:
        holder.kill()
        holder.wait()
    # Its holder gone, the lock is stale: gc clears it and destroys the stack.
    proc = dstack("gc", timeout=60)
    assert f"cleared a stale lock on stack run-{run}" in proc.stderr
    assert not lock.exists()
    _ps_then_gc(dstack, run)


@pytest.mark.timeout(240)
def test_a_checkpoint_cut_short_by_a_killed_engine_is_repaired_by_the_next_command(
        dstack: Dstack) -> None:
    """An engine killed (SIGKILL, out of memory) after rewriting a checkpoint's sidecar and
    before renaming the new checkpoint into place leaves its lock, that checkpoint as a temp
    file and an empty sidecar: the files of the CI failure that prompted the repair. Pulumi
    alone then refuses the stack; the next command commits what the engine was saving and
    destroys everything it records."""
    run = _finished_detached(dstack)
    current = dstack.stack_files()[f"run-{run}"]
    saving = json.loads(current.read_text())
    saved = json.loads(current.read_text())
    latest = saved["checkpoint"]["latest"]
    latest["resources"] = [r for r in latest["resources"] if "RunnerProcess" not in r["type"]]
    current.write_text(json.dumps(saved))
    tmp = current.with_name(f"{current.name}.18eb90867dfd7da7.tmp")
    tmp.write_text(json.dumps(saving))
    Path(f"{current}.attrs").write_text("")
    lock = _plant_lock(dstack.home, run, _dead_pid())
    with pytest.raises(subprocess.CalledProcessError) as refused:
        dstack.pulumi("stack", "export", "--stack", f"run-{run}")
    assert "failed to load checkpoint" in refused.value.stderr
    proc = dstack("ps", timeout=60)
    # Both resources: the runner too, which only the temp checkpoint recorded.
    assert f"destroyed stack run-{run} (2 resource(s))" in proc.stderr, proc.stderr
    assert not lock.exists() and not tmp.exists()
    _ps_then_gc(dstack, run)


@pytest.mark.timeout(240)
def test_a_stack_that_cannot_be_destroyed_does_not_block_other_commands(
        dstack: Dstack) -> None:
    run = _finished_detached(dstack)
    current = dstack.stack_files()[f"run-{run}"]
    sound = current.read_bytes()
    current.write_text('{"version": 3, "checkpoint": ')  # no lock: no engine died saving it
    try:
        proc = dstack("ps", "-a", timeout=60)
        assert f"could not destroy the stack of run {run} now" in proc.stderr
        assert "`dstack gc` tries again" in proc.stderr
        assert run in proc.stdout
        other = dstack("run", "quick", timeout=120)
        assert "run done (exit code 0)" in other.stderr
        # gc names the run, and the file Pulumi cannot list the stacks past.
        proc = dstack("gc", timeout=60, expect=1)
        assert f"could not destroy the stack of run {run} now" in proc.stderr
        assert f"These state files do not load: {current}." in proc.stderr
        assert f"gc could not destroy the stack of 1 run(s): {run} or list the stacks" \
            in proc.stderr
        assert "Traceback" not in proc.stderr
        assert dstack.record(run)["torn_down"] is False
    finally:
        current.write_bytes(sound)
    _ps_then_gc(dstack, run)


def test_clear_stale_locks_removes_only_locks_of_dead_engines_on_this_host(
        home: Path) -> None:
    from dstack.config.profiles import LOCAL
    from dstack.stacks.local import LocalBackend

    holder = subprocess.Popen(["sleep", "300"])
    zombie = subprocess.Popen(["true"])  # exits, and stays a zombie until waited for
    poll("the zombie", lambda: not _alive(zombie.pid), timeout=10)
    try:
        locks = {
            "dead": _plant_lock(home, "dead-1", _dead_pid()),
            "zombie": _plant_lock(home, "zombie-1", zombie.pid),
            "live": _plant_lock(home, "live-1", holder.pid),
            "other-host": _plant_lock(home, "other-1", _dead_pid(), host="elsewhere"),
        }
        garbage = _lock_dir(home, "garbage-1")
        garbage.mkdir(parents=True)
        (garbage / "x.json").write_text("{not json")
        cleared = LocalBackend(LOCAL, home).clear_stale_locks()
    finally:
        holder.kill()
        holder.wait()
        zombie.wait()
    assert sorted(cleared) == ["run-dead-1", "run-zombie-1"]
    assert {k for k, p in locks.items() if p.exists()} == {"live", "other-host"}
    assert (garbage / "x.json").exists()

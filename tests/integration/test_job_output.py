"""What a script sees of a run, through the installed command on the local backend: the job's
stdout on stdout and nothing else there, its stderr and dstack's lines on stderr, dstack's
lines never glued to a partial line of the job, and `logs -f` exiting as the run did."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .harness import HOMES_IN_TEST, Dstack, write_project

pytestmark = pytest.mark.engine

WORKFLOWS = """
workflows:
  - name: talk
    provider: python
    file: talk.py
  - name: exit3
    provider: python
    file: exit3.py
  - name: rewrite
    provider: python
    file: rewrite.py
    artifacts: ["out"]
  - name: chatty
    provider: python
    file: chatty.py
"""

FILES = {
    "talk.py": """
        import sys
        print("out line 1")
        print("err line 1", file=sys.stderr)
        sys.stderr.flush()
        print("out line 2")
        sys.stdout.write("no newline at the end")
        sys.stdout.flush()
    """,
    "exit3.py": """
        import sys, time
        time.sleep(1)
        print("leaving with 3")
        sys.exit(3)
    """,
    "rewrite.py": """
        import os, time
        os.makedirs("out", exist_ok=True)
        open("out/a.txt", "w").write("a")
        open("out/b.txt", "w").write("b")
        for i in range(8):  # rewritten while the run's periodic syncs upload it again
            open("out/progress.txt", "w").write(str(i) * (i + 1))
            time.sleep(0.3)
    """,
}

FILES["chatty.py"] = """
    import time
    for i in range(1200):  # a minute, unless stopped
        print("line", i, flush=True)
        time.sleep(0.05)
"""

JOB_STDOUT = "out line 1\nout line 2\nno newline at the end"


@pytest.fixture(scope="module")
def dstack(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Dstack:
    project = write_project(tmp_path_factory.mktemp("project"), WORKFLOWS, FILES)
    return Dstack(module_home, project)


def _run_into_one_file(dstack: Dstack, out: Path, *args: str) -> int:
    """`dstack ARGS` with stdout and stderr into one file, as `> out 2>&1` does."""
    HOMES_IN_TEST.add(dstack.home)
    with open(out, "wb") as f:
        return subprocess.run(dstack.argv(*args), cwd=dstack.project, env=dstack.env(),
                              stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                              timeout=120).returncode


@pytest.mark.timeout(180)
def test_stdout_holds_only_the_jobs_stdout(dstack: Dstack) -> None:
    proc = dstack("run", "talk")
    assert proc.stdout == JOB_STDOUT
    assert "err line 1\n" in proc.stderr
    assert "out line" not in proc.stderr
    assert "[dstack] run done (exit code 0)" in proc.stderr  # the runner's own line
    run = dstack.newest_run("talk")["run"]
    logs = dstack("logs", run)
    assert logs.stdout == JOB_STDOUT
    assert "err line 1\n" in logs.stderr and "[dstack] run done" in logs.stderr


@pytest.mark.timeout(180)
def test_a_dstack_line_never_continues_a_partial_line_of_the_job(
        dstack: Dstack, tmp_path: Path) -> None:
    out = tmp_path / "all.txt"
    assert _run_into_one_file(dstack, out, "run", "talk") == 0
    lines = out.read_text().splitlines()
    assert "no newline at the end" in lines, lines
    glued = [line for line in lines if "[dstack]" in line and not line.startswith("[dstack]")]
    assert glued == [], lines
    run = dstack.newest_run("talk")["run"]
    assert _run_into_one_file(dstack, out, "logs", run) == 0
    lines = out.read_text().splitlines()
    assert "no newline at the end" in lines and "[dstack] run done (exit code 0)" in lines


@pytest.mark.timeout(180)
def test_logs_follow_exits_with_the_runs_exit_code(dstack: Dstack) -> None:
    run = dstack.run_detached("exit3")
    proc = dstack("logs", run, "-f", expect=3)
    assert proc.stdout == "leaving with 3\n"
    assert f"{run} failed: the job exited with 3" in proc.stderr
    dstack.assert_torn_down(run)  # by `logs -f`: no later command is needed
    assert dstack("logs", run).returncode == 0  # printing a finished run's log succeeds
    ok = dstack.run_detached("talk")
    assert dstack("logs", ok, "-f").stdout == JOB_STDOUT
    dstack.assert_torn_down(ok)


@pytest.mark.timeout(180)
def test_saved_artifacts_count_files_not_uploads(dstack: Dstack) -> None:
    proc = dstack("run", "rewrite")
    assert "[dstack] saved 3 artifact file(s)" in proc.stderr, proc.stderr
    run = dstack.newest_run("rewrite")["run"]
    assert dstack.artifact(run, "out/progress.txt").read_text() == "7" * 8


@pytest.mark.timeout(180)
def test_a_reader_that_leaves_stops_the_run_and_its_stack_goes(dstack: Dstack) -> None:
    # `dstack run chatty | head -1`: the pipe closes while the job still prints.
    HOMES_IN_TEST.add(dstack.home)
    proc = subprocess.Popen(dstack.argv("run", "chatty"), cwd=dstack.project,
                            env=dstack.env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 128 + 13, err
    assert "the reader of the output is gone (a closed pipe): stopping the run" in err
    assert "unexpectedly" not in err
    row = dstack.newest_run("chatty")
    assert row["status"] == "stopped", row
    dstack.assert_torn_down(row["run"])

"""What a newcomer expects of the installed `dstack`: `--version`, "did you mean" for a mistyped
run name in every command that takes one, `--env-file` (its values reach the job but not the
run record, the dry run or the log) and the reason a run failed in `dstack ps RUN`.

Only the tests marked `engine` run a job; the others need no Pulumi engine."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import Dstack, write_project

SECRET = "sk-live-7f3a9c2e-from-the-env-file"
WORKFLOWS = """
    workflows:
      - name: show
        provider: bash
        env: ["FROM_WF=from-workflow", "SHARED=from-workflow"]
        commands:
          - echo "token=$TOKEN"
          - echo "sum=$(printf %s "$TOKEN" | sha256sum | cut -c1-16)"
          - echo "from_wf=$FROM_WF shared=$SHARED debug=$DEBUG"
      - name: boom
        provider: bash
        commands: ["exit 3"]
    """
ENV_FILE = f"""
    # what the job needs
    export TOKEN="{SECRET}"
    FROM_WF=from-file
    SHARED=from-file  # --env wins
    DEBUG=1
    """


@pytest.fixture
def dstack(tmp_path: Path) -> Dstack:
    project = write_project(tmp_path / "project", WORKFLOWS,
                            {"f.txt": "data\n", "secrets.env": ENV_FILE})
    return Dstack(tmp_path / "home", project)


def _holders(root: Path, needle: str) -> list[str]:
    """Files under `root` that hold `needle`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and not p.is_symlink() and needle.encode() in p.read_bytes())


# -- --version -------------------------------------------------------------------------------


def test_version_prints_the_installed_version(dstack: Dstack) -> None:
    want = f"dstack {importlib.metadata.version('dstack')}\n"
    for flag in ("--version", "-V"):
        proc = dstack(flag)
        assert (proc.stdout, proc.stderr) == (want, "")


def test_version_imports_no_pulumi() -> None:
    code = ("import sys\nsys.argv = ['dstack', '--version']\nfrom dstack.cli.app import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code == 0, exc.code\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pulumi'\n"
            "             or m.startswith('dstack.stacks')))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout


@pytest.mark.parametrize("args", [["schema"], ["run", "python", "--help"]])
def test_a_reader_that_leaves_early_ends_the_command_quietly(
        dstack: Dstack, args: list[str]) -> None:
    # `dstack schema | head -1`: the reader is gone before dstack writes (closed at once here,
    # so that every write meets the closed pipe).
    proc = subprocess.Popen(dstack.argv(*args), cwd=dstack.project, env=dstack.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 128 + 13, err  # as a command SIGPIPE ended
    assert err == ""


# -- did you mean ----------------------------------------------------------------------------


def test_a_mistyped_run_name_gets_a_suggestion_in_every_command(dstack: Dstack) -> None:
    dstack("tags", "add", "v1", "--artifact", "f.txt")
    [run] = dstack.run_names()
    no_number, glued = run.rsplit("-", 1)[0], run[:-2] + run[-1]  # brave-otter, brave-otter1
    for typo in (no_number, glued, run.upper()):
        for argv in (["logs", typo], ["stop", typo, "-y"], ["rm", typo, "-y"], ["ps", typo],
                     ["artifacts", "list", typo], ["artifacts", "download", typo]):
            proc = dstack(*argv, expect=1)
            assert proc.stderr == f'error: no run named {typo!r}\nDid you mean "{run}"?\n', argv
    proc = dstack("logs", "zzz", expect=1)
    assert proc.stderr == "error: no run named 'zzz'\n`dstack ps -a` lists the runs.\n"
    assert dstack.run_names() == {run}


# -- --env-file ------------------------------------------------------------------------------


def test_env_file_values_are_hidden_in_the_dry_run(dstack: Dstack) -> None:
    proc = dstack("run", "show", "--env-file", "secrets.env", "--env", "SHARED=from-cli",
                  "--dry-run")
    job = json.loads(proc.stdout)["job"]
    assert job["env"] == {"FROM_WF": "***", "SHARED": "from-cli", "TOKEN": "***",
                          "DEBUG": "***"}
    assert job["stored_env"] == ["DEBUG", "FROM_WF", "TOKEN"]
    assert job["args"] == []
    assert SECRET not in proc.stdout + proc.stderr
    assert dstack.run_names() == set()


def test_a_bad_env_file_is_a_usage_error_naming_the_file_and_line(dstack: Dstack) -> None:
    (dstack.project / "bad.env").write_text(f"# ok\nA=1\n{SECRET}\n")
    proc = dstack("run", "show", "--env-file", "bad.env", "--dry-run", expect=2)
    assert proc.stderr.startswith("error: bad.env:3: expected KEY=VALUE\n"), proc.stderr
    assert SECRET not in proc.stderr and proc.stdout == ""
    proc = dstack("run", "show", "--env-file", "missing.env", "--dry-run", expect=2)
    assert proc.stderr.startswith("error: --env-file missing.env: no such file\n"), proc.stderr
    assert dstack.run_names() == set()


@pytest.mark.engine
def test_env_file_values_reach_the_job_but_not_the_record_or_the_log(
        module_home: Path, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", WORKFLOWS, {"secrets.env": ENV_FILE})
    dstack = Dstack(module_home, project)
    proc = dstack("run", "show", "--env-file", "secrets.env", "--env", "SHARED=from-cli")
    digest = hashlib.sha256(SECRET.encode()).hexdigest()[:16]
    # the file's FROM_WF (masked: a file value) beat the workflow's; --env's SHARED beat the
    # file's; DEBUG=1 is too short to mask
    assert proc.stdout.splitlines() == [
        "token=***", f"sum={digest}", "from_wf=*** shared=from-cli debug=1"]
    assert SECRET not in proc.stderr
    run = dstack.newest_run("show")["run"]
    record = dstack.record(run)
    assert record["job"]["stored_env"] == ["DEBUG", "FROM_WF", "TOKEN"]
    assert record["job"]["env"] == {"SHARED": "from-cli"}
    assert "token=***" in dstack("logs", run).stdout
    store = module_home / "store"
    assert _holders(store, SECRET) == [f"runs/{run}/env.json"]
    assert _holders(module_home / "state", SECRET) == []
    dstack("rm", run, "-y")
    assert _holders(store, SECRET) == []


# -- ps RUN ----------------------------------------------------------------------------------


@pytest.mark.engine
def test_ps_of_one_run_says_why_it_failed(module_home: Path, tmp_path: Path) -> None:
    dstack = Dstack(module_home, write_project(tmp_path / "project", WORKFLOWS))
    dstack("run", "boom", expect=3)
    run = dstack.newest_run("boom")["run"]
    lines = dstack("ps", run).stdout.splitlines()
    assert lines[0].split()[:4] == ["RUN", "WORKFLOW", "PROVIDER", "STATUS"]
    assert lines[1].split()[:4] == [run, "boom", "bash", "failed"]
    assert lines[2:] == ["message: the job exited with 3"]
    [row] = dstack.json("ps", run)
    assert (row["status"], row["exit_code"], row["message"]) == (
        "failed", 3, "the job exited with 3")
    assert "message:" not in dstack("ps", "-a").stdout  # only the one-run view adds the line

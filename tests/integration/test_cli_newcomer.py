"""Smaller things a newcomer from SkyPilot or Modal expects of the installed `dstack`:

- run from a subfolder, `validate`, `run` and `ps` work on the project above it (the job still
  starts at the project's root, which is what is packaged; `-C` still wins);
- a problem in one workflow of `.dstack/workflows.yaml` stops neither a provider run nor a
  valid workflow (a one-line warning), only the broken workflow and those needing it;
- the `code` provider offline fails at once, saying what it needs;
- `echo VALUE | dstack secrets add NAME` reads the value from the pipe without a warning.

Only the tests marked `engine` run a job; the others need no Pulumi engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dstack.run.context import Context
from dstack.store.secrets import load_secrets

from .harness import Dstack, make_home, write_project

WORKFLOWS = """
    workflows:
      - name: hello
        provider: bash
        commands: ["cat root.txt", "pwd"]
    """
BROKEN = """
    workflows:
      - name: hello
        provider: bash
        commands: ["echo hello"]
      - name: broken
        provider: python
        file: x.py
        gpuz: 1
      - name: after-broken
        provider: bash
        depends-on: ["broken:latest"]
        commands: ["echo after"]
    """
BROKEN_ERROR = '.dstack/workflows.yaml:8:5: workflows[1].gpuz: unknown field "gpuz"'


def _project(tmp_path: Path, workflows: str = WORKFLOWS) -> Path:
    return write_project(tmp_path / "project", workflows, {
        "root.txt": "at the root\n", "sub/deeper/x.py": "print('x')\n",
        "sub/x.py": "import os; print('cwd=' + os.getcwd())\n"})


def _dry_run(dstack: Dstack, *args: str, cwd: Path) -> tuple[dict, str]:
    proc = dstack("run", "--dry-run", *args, cwd=cwd)
    return json.loads(proc.stdout), proc.stderr


# -- a subfolder of a project ------------------------------------------------------------------


def test_validate_from_a_subfolder_finds_the_project_and_says_which(tmp_path: Path) -> None:
    project = _project(tmp_path)
    dstack = Dstack(tmp_path / "home", project)
    deeper = project / "sub" / "deeper"
    proc = dstack("validate", cwd=deeper)
    assert proc.stderr.splitlines() == [
        f"[dstack] using the project at {project.resolve()}",
        "[dstack] hello: bash (.dstack/workflows.yaml:2)",
        "[dstack] 1 workflow(s), all valid"]
    assert "using the project" not in dstack("validate", cwd=project).stderr  # it is here
    proc = dstack("validate", "-C", ".", cwd=deeper)  # -C wins: that folder has none
    assert proc.stderr.splitlines() == ["[dstack] 0 workflow(s), all valid"]


def test_a_dry_run_from_a_subfolder_packages_the_project_and_starts_at_its_root(
        tmp_path: Path) -> None:
    project = _project(tmp_path)
    dstack = Dstack(tmp_path / "home", project)
    sub = project / "sub"
    shown, err = _dry_run(dstack, "hello", cwd=sub)
    at_root, _ = _dry_run(dstack, "hello", cwd=project)
    assert shown["code"] == at_root["code"] and shown["code"]["files"] == 4
    assert shown["project"] == at_root["project"] == str(project.resolve())
    assert shown["job"]["working_dir"] == "."
    assert (f"[dstack] using the project at {project.resolve()}; the job starts at its root "
            "(`--working-dir sub` starts it here)") in err.splitlines()
    shown, err = _dry_run(dstack, "--working-dir", "sub", "python", "x.py", cwd=sub)
    assert shown["job"]["working_dir"] == "sub" and shown["code"]["files"] == 4
    assert f"[dstack] using the project at {project.resolve()}" in err.splitlines()


def test_the_dstack_home_above_a_folder_is_not_its_project(tmp_path: Path) -> None:
    """A dstack home named `.dstack` (as `~/.dstack` is) is no project, even holding a file
    called workflows.yaml: the folder dstack runs in stays the project."""
    home = tmp_path / "user" / ".dstack"
    write_project(tmp_path / "user", WORKFLOWS)  # .dstack/workflows.yaml inside the home
    folder = tmp_path / "user" / "code"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.py").write_text("print('x')\n")
    dstack = Dstack(home, folder)
    proc = dstack("validate", cwd=folder / "sub")
    assert proc.stderr.splitlines() == ["[dstack] 0 workflow(s), all valid"]
    shown, err = _dry_run(dstack, "python", "x.py", cwd=folder / "sub")
    assert shown["project"] == str((folder / "sub").resolve())
    assert "using the project" not in err


@pytest.mark.engine
def test_run_and_ps_from_a_subfolder_use_the_project(tmp_path: Path) -> None:
    project = _project(tmp_path)
    dstack = Dstack(make_home(tmp_path / "home"), project)
    deeper = project / "sub" / "deeper"
    proc = dstack("run", "hello", cwd=deeper)
    assert proc.stdout.splitlines()[0] == "at the root"
    assert proc.stdout.splitlines()[1].endswith("/repo")  # the job starts at the root
    assert f"[dstack] packaged 4 file(s) of {project.resolve()}" in proc.stderr.splitlines()
    proc = dstack("run", "--working-dir", "sub", "python", "x.py", cwd=deeper)
    assert proc.stdout.splitlines()[-1].endswith("/repo/sub")
    runs = dstack.json("ps", "-a", cwd=deeper)
    assert [r["workflow"] for r in runs] == ["", "hello"]
    assert [r["run"] for r in runs] == [r["run"] for r in dstack.ps()]  # as at the root


# -- a problem in one workflow -------------------------------------------------------------------


def test_a_broken_workflow_blocks_only_itself_and_what_needs_it(tmp_path: Path) -> None:
    project = _project(tmp_path, BROKEN)
    dstack = Dstack(tmp_path / "home", project)
    proc = dstack("validate", expect=2)
    assert proc.stderr.splitlines()[0] == f"error: {BROKEN_ERROR}"
    shown, err = _dry_run(dstack, "python", "sub/x.py", cwd=project)
    assert shown["provider"] == "python"
    assert err.splitlines()[0] == (
        "[dstack] warning: .dstack/workflows.yaml has problems (`dstack validate` lists "
        "them); this run of the python provider does not use it")
    shown, err = _dry_run(dstack, "hello", cwd=project)
    assert shown["workflow"] == "hello"
    assert err.splitlines()[0] == ("[dstack] warning: .dstack/workflows.yaml has problems "
                                   "outside workflow hello (`dstack validate` lists them)")
    for target in ("broken", "after-broken", "no-such-workflow"):
        proc = dstack("run", "--dry-run", target, expect=2)
        assert proc.stderr.splitlines()[0] == f"error: {BROKEN_ERROR}", target
        assert proc.stdout == ""
    # The help of a workflow that is fine shows, with the same warning; a broken one's does not.
    proc = dstack("run", "hello", "--help")
    assert proc.stdout.startswith("Usage: dstack run hello [dstack run OPTIONS]")
    assert "has problems outside workflow hello" in proc.stderr
    proc = dstack("run", "broken", "--help", expect=2)
    assert proc.stderr.splitlines()[0] == f"error: {BROKEN_ERROR}"
    assert dstack.run_names() == set()


def test_a_workflow_file_that_is_not_yaml_blocks_only_workflows(tmp_path: Path) -> None:
    project = _project(tmp_path, "workflows:\n  - name: a\n   provider: [\n")
    dstack = Dstack(tmp_path / "home", project)
    shown, err = _dry_run(dstack, "python", "sub/x.py", cwd=project)
    assert shown["provider"] == "python" and "has problems" in err.splitlines()[0]
    proc = dstack("run", "--dry-run", "a", expect=2)
    assert "invalid YAML" in proc.stderr.splitlines()[0]


@pytest.mark.engine
def test_a_provider_run_goes_ahead_despite_a_broken_workflow(tmp_path: Path) -> None:
    project = _project(tmp_path, BROKEN)
    dstack = Dstack(make_home(tmp_path / "home"), project)
    proc = dstack("run", "python", "sub/x.py")
    assert proc.stdout.splitlines()[-1].endswith("/repo")
    assert "has problems" in proc.stderr.splitlines()[0]
    assert [r["provider"] for r in dstack.ps()] == ["python"]


# -- the code provider offline -------------------------------------------------------------------


@pytest.mark.engine
def test_the_code_provider_offline_fails_at_once_saying_what_it_needs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No server on PATH and a download that cannot connect (a stand-in curl that fails as
    curl does offline): one attempt, then how to get a server."""
    if shutil.which("openvscode-server") or shutil.which("code-server"):
        pytest.skip("a code server is on PATH here")
    fake = tmp_path / "offline-bin"
    fake.mkdir()
    (fake / "curl").write_text('#!/bin/sh\necho "$*" >> "$CURL_CALLS"\n'
                               'echo "curl: (6) Could not resolve host: github.com" >&2\n'
                               "exit 6\n")
    (fake / "curl").chmod(0o755)
    calls = tmp_path / "curl-calls"
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("CURL_CALLS", str(calls))
    monkeypatch.setenv("DSTACK_CACHE", str(tmp_path / "cache"))
    project = _project(tmp_path)
    dstack = Dstack(make_home(tmp_path / "home"), project)
    proc = dstack("run", "code", expect=1)
    assert ("dstack: the code provider needs openvscode-server or code-server on PATH, or "
            "internet access to download openvscode-server once.") in proc.stderr
    assert "npm install -g code-server" in proc.stderr
    assert len(calls.read_text().splitlines()) == 1  # one attempt, no retries
    assert "--retry" not in calls.read_text()
    assert dstack.newest_run()["status"] == "failed"


# -- secrets from a pipe -----------------------------------------------------------------------


def _secrets_add(dstack: Dstack, name: str, stdin: str,
                 *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(dstack.argv("secrets", "add", name, *flags), cwd=dstack.project,
                          env=dstack.env(), input=stdin, capture_output=True, text=True,
                          timeout=120)


def _secrets(home: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("DSTACK_HOME", str(home))
    return load_secrets(Context.open(None).store)


def test_secrets_add_reads_a_pipe_without_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dstack = Dstack(tmp_path / "home", _project(tmp_path))
    proc = _secrets_add(dstack, "API_KEY", "abc\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[-1] == "[dstack] secret API_KEY saved in profile local"
    assert "arning" not in proc.stderr and "Value of" not in proc.stdout + proc.stderr
    key = "-----BEGIN KEY-----\nAAAA\n-----END KEY-----"
    assert _secrets_add(dstack, "PEM", key + "\r\n\n").returncode == 0  # all of it
    assert _secrets_add(dstack, "SAME", "xyz\n", "--from-stdin").returncode == 0
    assert _secrets(dstack.home, monkeypatch) == {"API_KEY": "abc", "PEM": key, "SAME": "xyz"}
    proc = _secrets_add(dstack, "EMPTY", "")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: the value of secret EMPTY is empty"]

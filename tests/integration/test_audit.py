"""`dstack audit` through the installed command and the real Pulumi engine: update versions,
counts that agree with the listed resources, a removed run answered from its stack's history,
and the `pulumi stack history` command it prints, run as a user would paste it."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from .harness import Dstack, write_project

pytestmark = pytest.mark.engine

HINT = "the same history from Pulumi: "
"""What precedes the `pulumi stack history` command in audit's message."""


@pytest.fixture(scope="module")
def dstack(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Dstack:
    """A project with no workflow of its own, with a dstack home shared by this module."""
    project = write_project(tmp_path_factory.mktemp("project"), "workflows: []\n")
    return Dstack(module_home, project)


def _run(dstack: Dstack, text: str) -> str:
    dstack("run", "bash", f"echo {text}")
    return dstack.newest_run()["run"]


def _command(stderr: str) -> str:
    """The `pulumi stack history` command audit printed (its one line)."""
    [line] = [ln for ln in stderr.splitlines() if HINT in ln]
    return line.split(HINT, 1)[1]


def _pasted(command: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`command` run by bash as if pasted into a fresh shell elsewhere: no dstack or Pulumi
    variables, a HOME of its own, no Pulumi.yaml in the folder (update checks are off only
    to keep the test off the network)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd),
           "PULUMI_SKIP_UPDATE_CHECK": "true"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.timeout(120)
def test_updates_carry_their_version_and_counts_agree_with_the_resources(
        dstack: Dstack) -> None:
    run = _run(dstack, "counted")
    trail = dstack.json("audit", run)
    assert [(t["version"], t["kind"]) for t in trail] == [(1, "up"), (2, "destroy")]
    for update in trail:
        assert update["changes"] == dict(Counter(r["op"] for r in update["resources"]))
    assert trail[0]["changes"] == {"create": 2} and trail[1]["changes"] == {"delete": 2}
    # Pulumi's own count also has the stack's resource (pulumi:pulumi:Stack).
    history = json.loads(dstack.pulumi("stack", "history", "--json", "--stack",
                                       f"run-{run}").stdout)
    history.reverse()
    assert [t["pulumi_changes"] for t in trail] == [h["resourceChanges"] for h in history]
    assert [t["pulumi_changes"] for t in trail] == [{"create": 3}, {"delete": 3}]

    table = dstack("audit", run).stdout.splitlines()
    assert table[0].split()[:2] == ["UPDATE", "KIND"]
    assert [row.split()[:2] for row in table[1:]] == [["1", "up"], ["2", "destroy"]]


@pytest.mark.timeout(120)
def test_the_printed_pulumi_command_works_when_pasted(dstack: Dstack, tmp_path: Path) -> None:
    run = _run(dstack, "pasted")
    proc = dstack("audit", run)
    command = _command(proc.stderr)
    assert f"--stack organization/dstack/run-{run}" in command
    passphrase = (dstack.home / "secrets" / "pulumi-passphrase").read_text().strip()
    assert passphrase not in command
    assert _command(dstack("audit", run, "--json").stderr) == command

    pasted = _pasted(command, tmp_path)
    assert pasted.returncode == 0, pasted.stderr
    kinds = [ln.split(":", 1)[1].strip() for ln in pasted.stdout.splitlines()
             if ln.startswith("UpdateKind:")]
    assert kinds == ["destroy", "update"]  # newest first, as pulumi lists them


@pytest.mark.timeout(120)
def test_a_removed_run_is_audited_from_its_stack_history(dstack: Dstack,
                                                         tmp_path: Path) -> None:
    run = _run(dstack, "removed")
    dstack("rm", run, "-y")
    assert run not in dstack.run_names()

    proc = dstack("audit", run)
    assert f"the record of run {run} was removed" in proc.stderr
    assert [row.split()[:3] for row in proc.stdout.splitlines()[1:]] == [
        ["1", "up", "succeeded"], ["2", "destroy", "succeeded"]]
    assert "create 3 (Pulumi's count)" in proc.stdout

    trail = dstack.json("audit", run)
    assert [(t["version"], t["kind"], t["result"]) for t in trail] == [
        (1, "up", "succeeded"), (2, "destroy", "succeeded")]
    assert [(t["resources"], t["changes"]) for t in trail] == [(None, None), (None, None)]
    assert [t["pulumi_changes"] for t in trail] == [{"create": 3}, {"delete": 3}]

    pasted = _pasted(_command(proc.stderr), tmp_path)
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.count("UpdateKind:") == 2


@pytest.mark.timeout(120)
def test_a_name_that_never_had_a_stack_is_no_run(dstack: Dstack) -> None:
    kept = _run(dstack, "kept")
    removed = _run(dstack, "gone")
    dstack("rm", removed, "-y")
    for target in (kept, removed):
        typo = f"{target}9"
        proc = dstack("audit", typo, expect=1)
        assert proc.stdout == ""
        assert proc.stderr == f"error: no run named {typo!r}\nDid you mean \"{target}\"?\n"
    proc = dstack("audit", "zzzz-qqqq-1", expect=1)
    assert proc.stderr == "error: no run named 'zzzz-qqqq-1'\n`dstack ps -a` lists the runs.\n"

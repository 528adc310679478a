"""Secrets do not leak: the Pulumi passphrase of the dstack home, and a secret added with
`dstack secrets add`, appear nowhere they should not after real runs: not in the store (run
documents, logs, artifacts, code archives), not in Pulumi's state (the files, its backups and
history, `pulumi stack export`, `pulumi stack history`), not in the rendered bootstrap and
job scripts, not in the environment of the runner or the job (the passphrase) and not in
anything a dstack command prints.

A value passed with `--env K=V` is not a secret by definition and is not checked. Pulumi's
own logs under `pulumi/home/logs` are encrypted by Pulumi and are searched only as bytes.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import subprocess
from pathlib import Path

import pytest

from .harness import TERMINAL, Dstack, poll, write_project

pytestmark = pytest.mark.engine

SECRET = "sEcReT-vAlUe-5d2f9c1e-only-in-the-store"

WORKFLOWS = """
workflows:
  - name: leaky
    provider: bash
    commands:
      - mkdir -p out
      - echo "token=$API_TOKEN"
      - env | sort > env.txt
      - echo $$ > out/pid.txt
      - echo done > out/result.txt
      - while [ ! -e go ]; do sleep 0.05; done
    artifacts: ["out"]
"""


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


def _contents(path: Path) -> bytes:
    """A file's bytes, and what it holds uncompressed when it is gzip'd (code archives)."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        with contextlib.suppress(OSError, EOFError):
            data += gzip.decompress(data)
    return data


def _holders(roots: list[Path], needle: bytes, allowed: set[Path]) -> list[str]:
    found = []
    for root in roots:
        for path in _files(root) if root.is_dir() else [root]:
            if path not in allowed and needle in _contents(path):
                found.append(str(path))
    return found


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode(errors="replace").partition("=")[::2]
                for item in raw.split(b"\0") if item)


@pytest.mark.timeout(300)
def test_the_passphrase_and_secrets_appear_nowhere_else(home: Path, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", WORKFLOWS)
    dstack = Dstack(home, project)
    printed: list[str] = []

    def cli(*args: str, **kw: object) -> str:
        proc = dstack(*args, **kw)  # type: ignore[arg-type]
        printed.extend([proc.stdout, proc.stderr])
        return proc.stdout

    added = subprocess.run(dstack.argv("secrets", "add", "API_TOKEN", "--from-stdin"),
                           cwd=project, env=dstack.env(), input=SECRET + "\n", text=True,
                           capture_output=True, timeout=60)
    assert added.returncode == 0, added.stderr
    printed.extend([added.stdout, added.stderr])

    printed.append(cli("run", "leaky", "--dry-run"))
    run = cli("run", "leaky", "-d").strip()
    workdir = home / "workdirs" / run
    poll("the job to be running", lambda: dstack.artifact(run, "out/pid.txt").is_file(),
         timeout=90)
    passphrase = (home / "secrets" / "pulumi-passphrase").read_text().strip()
    assert len(passphrase) >= 32

    # While it runs: what its compute was started with, and the environments.
    bootstrap = (workdir / "bootstrap.sh").read_bytes()
    job_script = (workdir / "work" / "job.sh").read_bytes()
    runner_env = _environ(int(dstack.record(run)["instance"]["pid"]))
    job_env = _environ(int(dstack.artifact(run, "out/pid.txt").read_text()))
    snapshot = tmp_path / "while-running"
    snapshot.mkdir()
    for name, data in (("bootstrap.sh", bootstrap), ("job.sh", job_script),
                       ("runner.env", json.dumps(runner_env).encode()),
                       ("job.env", json.dumps(job_env).encode())):
        (snapshot / name).write_bytes(data)
    assert b"dstack.runner" in bootstrap  # the scripts were read for real
    assert job_env.get("API_TOKEN") == SECRET  # the job does get its secret

    (workdir / "work" / "repo" / "go").touch()
    assert dstack.wait_record(run, TERMINAL, timeout=90)["status"] == "done"
    printed.append(cli("ps", "-a", "--json"))
    dstack.assert_torn_down(run)
    logs = cli("logs", run)
    printed.append(logs)
    printed.append(cli("audit", run, "--json"))
    printed.append(cli("artifacts", "list", run, "--json"))
    cli("run", "bash", "echo second run", "--artifact", "nothing")
    for stack in ("workspace-local", f"run-{run}"):
        printed.append(dstack.pulumi("stack", "export", "--stack", stack).stdout)
        printed.append(dstack.pulumi("stack", "history", "--json", "--stack", stack).stdout)
    (tmp_path / "printed.txt").write_text("\n".join(printed))

    # The job printed its secret: the log shows it masked.
    assert "token=***" in logs and SECRET not in logs

    roots = [home / "store", home / "state", home / "pulumi", home / "workdirs",
             home / "cache", snapshot, tmp_path / "printed.txt"]
    assert (home / "state" / ".pulumi" / "history").is_dir()  # the search saw Pulumi's history
    assert _holders(roots, passphrase.encode(), set()) == []
    assert "PULUMI_CONFIG_PASSPHRASE" not in json.dumps(job_env)
    assert not any(k.startswith("PULUMI_") for k in job_env), sorted(job_env)
    # The secret is kept in one place only (the profile's store), not in state or scripts;
    # only the job's own environment has it.
    own = home / "store" / "secrets" / "API_TOKEN"
    assert own.read_text() == SECRET
    assert _holders(roots, SECRET.encode(), {own, snapshot / "job.env"}) == []

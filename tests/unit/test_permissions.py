"""Permissions of what dstack keeps: the dstack home and every folder under it that holds
state, secrets, config or runs is 0700, every file in them 0600; the Pulumi passphrase is
generated once, whole, 0600. Checked on the helpers, and after real runs (the real engine)
started with a permissive umask (000), as a careless shell might have."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from dstack.home import private_dir, secret_file, write_private

PRIVATE_ROOTS = ("state", "secrets", "pulumi", "store", "stores", "workdirs", "cache")
"""Folders of the dstack home whose whole trees must be the user's alone (`engine/` holds
the shared engine binaries and is left out)."""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def too_open(home: Path) -> list[str]:
    """Files not 0600 (or stricter) and folders not 0700 under the private roots of `home`."""
    bad = []
    if _mode(home) != 0o700:
        bad.append(f"{oct(_mode(home))} {home}")
    for root in PRIVATE_ROOTS:
        for path in [home / root, *(home / root).rglob("*")] if (home / root).exists() else []:
            mode = _mode(path)
            if path.is_symlink():
                continue
            if (path.is_dir() and mode != 0o700) or (not path.is_dir() and mode & 0o077):
                bad.append(f"{oct(mode)} {path.relative_to(home)}")
    return bad


# -- the helpers -----------------------------------------------------------------------------


def test_private_dir_closes_an_existing_open_folder(tmp_path: Path) -> None:
    folder = tmp_path / "a" / "b"
    folder.mkdir(parents=True, mode=0o755)
    folder.chmod(0o755)
    assert private_dir(folder) == folder
    assert _mode(folder) == 0o700


def test_write_private_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_private(tmp_path / "sub" / "f", b"x")
        write_private(tmp_path / "sub" / "f", b"y")  # replacing keeps it private
    finally:
        os.umask(old)
    assert _mode(tmp_path / "sub" / "f") == 0o600
    assert _mode(tmp_path / "sub") == 0o700
    assert (tmp_path / "sub" / "f").read_bytes() == b"y"
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["f"]  # no temp file left


def test_the_secret_file_is_made_once_whole_and_0600(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "pulumi-passphrase"
    old = os.umask(0)
    values: list[str] = []
    try:
        threads = [threading.Thread(target=lambda: values.append(secret_file(path)))
                   for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.umask(old)
    assert len(set(values)) == 1 and len(values[0]) >= 32
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    assert secret_file(path) == values[0]
    assert sorted(p.name for p in path.parent.iterdir()) == ["pulumi-passphrase"]


def test_the_secret_file_is_the_same_for_processes_racing_to_make_it(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "pulumi-passphrase"
    code = "import sys; from pathlib import Path; from dstack.home import secret_file; " \
           "print(secret_file(Path(sys.argv[1])))"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE,
                              text=True, umask=0) for _ in range(6)]
    values = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(values) == 1 and values != {""}
    assert _mode(path) == 0o600


# -- after real runs -------------------------------------------------------------------------


@pytest.mark.engine
@pytest.mark.timeout(300)
def test_everything_dstack_keeps_is_private_after_real_runs(home: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / ".dstack").mkdir(parents=True)
    (project / ".dstack" / "workflows.yaml").write_text(
        "workflows:\n  - name: w\n    provider: bash\n"
        "    commands: [\"mkdir -p out\", \"umask > out/umask.txt\", \"echo hi > out/x.txt\"]\n"
        "    artifacts: [out]\n")
    (project / "code.py").write_text("print('code')\n")
    env = {**os.environ, "DSTACK_HOME": str(home)}
    binary = Path(sys.executable).with_name("dstack")

    def dstack(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(binary), *args], cwd=project, env=env, text=True,
                              capture_output=True, timeout=120, umask=0, input=stdin)
        assert proc.returncode == 0, proc.stderr
        return proc

    dstack("run", "w", "--tag", "t1")
    dstack("config", "add", "local", "other")
    proc = dstack("run", "bash", "echo detached", "-d", "--profile", "other")
    run = proc.stdout.strip()
    subprocess.run([str(binary), "logs", run, "-f", "--profile", "other"], cwd=project,
                   env=env, capture_output=True, timeout=120, umask=0)
    dstack("ps", "--profile", "other")  # tears the detached run down
    dstack("secrets", "add", "TOKEN", "--from-stdin", stdin="s3cr3t\n")
    dstack("audit", run, "--profile", "other")
    dstack("gc")

    assert (home / "state" / ".pulumi" / "stacks").is_dir()
    assert (home / "config.yaml").is_file()
    assert list((home / "store" / "runs").glob("*/artifacts/out/x.txt"))
    assert list((home / "stores" / "other" / "runs").glob("*/run.json"))
    assert _mode(home / "secrets" / "pulumi-passphrase") == 0o600
    assert _mode(home / "config.yaml") == 0o600
    assert _mode(home / "store" / "secrets" / "TOKEN") == 0o600
    assert too_open(home) == []
    # dstack's files are private, but the job itself runs with the usual umask.
    [umask] = list((home / "store" / "runs").glob("*/artifacts/out/umask.txt"))
    assert umask.read_text().strip() == "0022"

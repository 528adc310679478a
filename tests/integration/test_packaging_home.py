"""The user's report, through the CLI: run from the home folder, whose `.dstack` is the
dstack home, the code archive holds neither the home, nor a secret, nor credentials; a dry
run counts what would be packaged; a project over `max_code_size` is refused creating
nothing; `dstack gc` removes code archives no run uses once they are old enough."""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from .harness import Dstack, make_home

SECRET = "abc-the-api-key-4711"


def _archive_members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: (f.read() if (f := tar.extractfile(m)) else b"")
                for m in tar.getmembers()}


def _set_mtime_back(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.mark.timeout(300)
def test_running_from_the_home_folder_never_packages_the_home_or_credentials(
        tmp_path: Path) -> None:
    me = tmp_path / "me"  # the user's home folder, and the project: `cd ~`
    home = make_home(me / ".dstack")  # DSTACK_HOME=$PWD/.dstack
    files = {"hi.py": "print('hi from', __file__)\n",
             ".aws/credentials": "[default]\naws_secret_access_key = s3cr3t\n",
             ".ssh/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\n",
             ".env": f"API_KEY={SECRET}\n"}
    for rel, text in files.items():
        (me / rel).parent.mkdir(parents=True, exist_ok=True)
        (me / rel).write_text(text)
    dstack = Dstack(home, me)

    added = subprocess.run(dstack.argv("secrets", "add", "API_KEY", "--from-stdin"), cwd=me,
                           env=dstack.env(), input=f"{SECRET}\n", capture_output=True,
                           text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert (home / "store" / "secrets" / "API_KEY").read_text() == SECRET

    # The dry run counts what would be packaged, says what it leaves out, and writes nothing.
    dry = dstack("run", "python", "hi.py", "--dry-run")
    shown = json.loads(dry.stdout)
    assert shown["code"] == {"files": 1, "bytes": len(files["hi.py"])}
    assert f"[dstack] would package 1 file(s), {len(files['hi.py'])} B" in dry.stderr
    assert not (home / "store" / "code").exists() and dstack.run_names() == set()

    proc = dstack("run", "python", "hi.py")
    assert "hi from" in proc.stdout
    for kind in (".aws/", ".ssh/", ".env"):
        lines = [x for x in proc.stderr.splitlines() if x.startswith(f"[dstack] not packaged: "
                                                                     f"{kind} (credentials")]
        assert len(lines) == 1, proc.stderr
    assert proc.stderr.count("(a dstack home; never packaged)") == 1, proc.stderr
    run = dstack.newest_run()["run"]
    code = dstack.record(run)["code"]
    archive = home / "store" / "code" / f"{code}.tar.gz"
    members = _archive_members(archive)
    assert set(members) == {"hi.py"}, sorted(members)
    passphrase = (home / "secrets" / "pulumi-passphrase").read_bytes().strip()
    for name, data in members.items():
        assert SECRET.encode() not in data and passphrase not in data, name

    # An oversized project is refused before anything is created, the dry run included.
    dstack("config", "set", "local", "max_code_size", "10kB")
    (me / "data").mkdir()
    (me / "data" / "big.bin").write_bytes(b"x" * 20_000)
    archives = sorted((home / "store" / "code").iterdir())
    stacks = dstack.stack_files()
    for extra in ((), ("--dry-run",)):
        refused = dstack("run", "python", "hi.py", *extra, expect=2)
        assert "20.0 kB" in refused.stderr and "10.0 kB" in refused.stderr, refused.stderr
        assert "data/ (20.0 kB)" in refused.stderr, refused.stderr
        assert ".dstackignore" in refused.stderr and "max_code_size" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert dstack.run_names() == {run}
    assert sorted((home / "store" / "code").iterdir()) == archives
    assert dstack.stack_files() == stacks
    dstack("config", "set", "local", "max_code_size", "--unset")

    # gc removes an unused archive once it is older than the grace period, and only it.
    unused_old = home / "store" / "code" / f"{'0' * 64}.tar.gz"
    unused_new = home / "store" / "code" / f"{'1' * 64}.tar.gz"
    for path in (unused_old, unused_new):
        path.write_bytes(b"an archive no run uses")
    _set_mtime_back(unused_old, 3600)
    _set_mtime_back(archive, 3600)  # old, but its run refers to it
    gc = dstack("gc")
    assert "1 unused code archive(s)" in gc.stderr, gc.stderr
    assert not unused_old.exists()
    assert unused_new.exists() and archive.exists()

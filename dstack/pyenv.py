"""The job's Python: this interpreter, or a virtualenv keyed by the requirements' hash.

Virtualenvs are created once per distinct requirements file and reused by later runs;
a lock keeps concurrent runs from building the same one twice.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dstack.errors import DstackError


def python_env(requirements: str | None, venvs: Path, say: Callable[[str], None]) -> Path:
    """The `bin` folder to put first on the job's PATH."""
    if not requirements:
        return Path(sys.executable).parent
    req = Path(requirements)
    if not req.is_file():
        raise DstackError(f"requirements file {req.name} is not in the run's code",
                          "Commit it (or un-ignore it), or fix `requirements` in the workflow.")
    key = hashlib.sha256(req.read_bytes() + sys.version.encode()).hexdigest()[:16]
    venv = venvs / key
    venvs.mkdir(parents=True, exist_ok=True)
    with open(venvs / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".ready").exists():
            say(f"reusing the virtualenv for {req.name} ({key})")
            return venv / "bin"
        shutil.rmtree(venv, ignore_errors=True)
        say(f"creating a virtualenv for {req.name} ({key})")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        proc = subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check",
             "-q", "-r", str(req)], capture_output=True, text=True,
        )
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise DstackError(f"installing {req.name} failed:\n{proc.stderr.strip()[-2000:]}",
                              "Fix the requirements file and run again.")
        (venv / ".ready").write_text("ok\n")
    return venv / "bin"

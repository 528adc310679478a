"""The job's Python: this interpreter, or a virtualenv keyed by what it must hold.

A job without a requirements file whose provider needs nothing missing here runs with this
interpreter. Otherwise a virtualenv is created once per distinct requirements file and
provider packages (keyed by their hash and this Python's version) and reused by later
runs; a lock keeps concurrent runs from building the same one twice. Provider packages
alone get a virtualenv that also sees this interpreter's packages.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from dstack.errors import DstackError


def _missing(packages: list[str]) -> list[str]:
    """The packages (pip names, import name = name with '-' → '_') not importable here."""
    out = []
    for spec in packages:
        module = spec.split("==")[0].split(">=")[0].strip().replace("-", "_")
        if importlib.util.find_spec(module) is None:
            out.append(spec)
    return out


def python_env(requirements: str | None, venvs: Path, say: Callable[[str], None],
               packages: list[str] | None = None) -> Path:
    """The `bin` folder to put first on the job's PATH."""
    needed = _missing(packages or [])
    if not requirements and not needed:
        return Path(sys.executable).parent
    req_bytes = b""
    label = " ".join(needed)
    if requirements:
        req = Path(requirements)
        if not req.is_file():
            raise DstackError(f"requirements file {req.name} is not in the run's code",
                              "Commit it (or un-ignore it), or fix `requirements` in the "
                              "workflow.")
        req_bytes = req.read_bytes()
        label = req.name + (f" + {label}" if label else "")
    key = hashlib.sha256(req_bytes + "\n".join(packages or []).encode() +
                         sys.version.encode()).hexdigest()[:16]
    venv = venvs / key
    venvs.mkdir(parents=True, exist_ok=True)
    with open(venvs / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".ready").exists():
            say(f"reusing the virtualenv for {label} ({key})")
            return venv / "bin"
        shutil.rmtree(venv, ignore_errors=True)
        say(f"creating a virtualenv for {label} ({key})")
        cmd = [sys.executable, "-m", "venv", str(venv)]
        if not requirements:
            cmd.append("--system-site-packages")
        subprocess.run(cmd, check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install",
               "--disable-pip-version-check", "-q"]
        if requirements:
            pip += ["-r", requirements]
        proc = subprocess.run([*pip, *(packages or [])], capture_output=True, text=True)
        if proc.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise DstackError(f"installing {label} failed:\n{proc.stderr.strip()[-2000:]}",
                              "Fix the requirements and run again.")
        (venv / ".ready").write_text("ok\n")
    return venv / "bin"

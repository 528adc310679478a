"""The exact dstack this CLI runs, as a wheel a cloud instance installs.

From a source checkout (an editable install) the wheel is built once per distinct source
(keyed by the hash of the package's files) and cached under the dstack home; the key in the
store carries the same hash, so an instance always installs the code the CLI ran.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dstack
from dstack.errors import DstackError

PACKAGE_DIRS = ("dstack", "stacks", "providers", "cli")


@dataclass(frozen=True)
class Wheel:
    """A built wheel and its store key."""

    path: Path
    digest: str

    @property
    def store_key(self) -> str:
        """Where it lives in a profile's store."""
        return f"wheels/{self.digest}/{self.path.name}"


def source_root() -> Path | None:
    """The checkout dstack runs from, when it is one (it has pyproject.toml)."""
    root = Path(dstack.__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def source_digest(root: Path) -> str:
    """sha256 over the package's source files and pyproject.toml."""
    h = hashlib.sha256()
    files = [root / "pyproject.toml"]
    for folder in PACKAGE_DIRS:
        files += sorted(p for p in (root / folder).rglob("*")
                        if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()[:20]


def build_wheel(cache: Path) -> Wheel:
    """This dstack as a wheel (built once per source digest)."""
    root = source_root()
    if root is None:
        raise DstackError("dstack is not running from a source checkout, and a cloud instance "
                          "needs its wheel", "Install dstack from a checkout (pip install -e .).")
    digest = source_digest(root)
    out = cache / "wheels" / digest
    found = sorted(out.glob("dstack-*.whl")) if out.is_dir() else []
    if found:
        return Wheel(found[0], digest)
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps",
         "--disable-pip-version-check", "-q", "-w", str(out), str(root)],
        capture_output=True, text=True,
    )
    found = sorted(out.glob("dstack-*.whl"))
    if proc.returncode != 0 or not found:
        raise DstackError(f"building dstack's wheel failed:\n{proc.stderr.strip()[-1500:]}",
                          "Check that `pip wheel .` works in the dstack checkout.")
    return Wheel(found[0], digest)

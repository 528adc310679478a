"""The exact dstack this CLI runs, as a wheel a cloud instance installs.

From a source checkout (an editable install) the wheel is built once per distinct source
(keyed by the hash of the package's files) and cached under the dstack home; the key in the
store carries the same hash, so an instance always installs the code the CLI ran. A wheel
named by env `DSTACK_WHEEL` or the profile's `wheel` is keyed by its own hash instead.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dstack
from dstack.config.profiles import Profile
from dstack.errors import DstackError, UsageError
from dstack.store.keys import wheel_key

PACKAGE_DIRS = ("dstack", "stacks", "providers", "cli")
WHEEL_ENV = "DSTACK_WHEEL"


@dataclass(frozen=True)
class Wheel:
    """A dstack wheel: the file, the digest its store key is named by, and the file's
    SHA-256, which an instance checks before installing it."""

    path: Path
    digest: str
    sha256: str

    @property
    def name(self) -> str:
        """The wheel's file name."""
        return self.path.name

    @property
    def store_key(self) -> str:
        """Where it lives in a profile's store: `wheels/<digest>/<file name>`."""
        return wheel_key(self.digest, self.path.name)


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
        return Wheel(found[0], digest, _sha256(found[0]))
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
    return Wheel(found[0], digest, _sha256(found[0]))


def find_wheel(profile: Profile, cache: Path) -> Wheel:
    """The wheel to install on instances: env `DSTACK_WHEEL` or the profile's `wheel` (a
    file, keyed by its own hash), else this very dstack built by `build_wheel`."""
    given = os.environ.get(WHEEL_ENV) or profile.settings.get("wheel")
    if not given:
        return build_wheel(cache)
    path = Path(str(given)).expanduser()
    if not path.is_file() or not path.name.startswith("dstack-") or path.suffix != ".whl":
        raise UsageError(f"{path} is not a dstack wheel file",
                         f"Point {WHEEL_ENV} (or the profile's `wheel`) at dstack-*.whl.")
    sha256 = _sha256(path)
    return Wheel(path=path, digest=sha256[:20], sha256=sha256)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()

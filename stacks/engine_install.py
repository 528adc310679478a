"""Provide the Pulumi engine (the `pulumi` CLI) at the version of the pinned Python SDK.

Run as `python -m dstack.stacks.engine_install` (the Makefile does). It is idempotent and
tries, in order:

a. a `pulumi` on PATH whose version is the pinned one or newer (linked into the engine dir);
b. the official installer, with a short time-out (works on a machine with internet);
c. a build from Go modules through the Go module proxy, from a throw-away wrapper module.

The engine lives outside the repository, in `<dstack home>/engine/<version>/bin`, beside
the dynamic-provider launcher `pulumi-resource-pulumi-python`, which starts dstack's lean host
of the local resources (`provider_host`) instead of the SDK's.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dstack.errors import EngineMissingError
from dstack.files import replacing
from dstack.home import default_home, dstack_home, private_dir

PULUMI_VERSION = "3.260.0"
"""The engine release; the `pulumi` Python SDK in pyproject.toml is pinned to the same."""

PKG_MODULE = "github.com/pulumi/pulumi/pkg/v3"
SDK_MODULE = "github.com/pulumi/pulumi/sdk/v3"
OFFICIAL_TIMEOUT_S = 60
LAUNCHER_NAME = "pulumi-resource-pulumi-python"
LAUNCHER = ('#!/bin/sh\n'
            'exec "${PULUMI_PYTHON_CMD:-python3}" -u -m dstack.stacks.provider_host "$@"\n')


def engine_root(home: Path | None = None, version: str = PULUMI_VERSION) -> Path:
    """The folder whose `bin/` holds the engine of `version`."""
    return (home or dstack_home()) / "engine" / version


def engine_bin(home: Path | None = None, version: str = PULUMI_VERSION) -> Path:
    """The folder that holds `pulumi` and the launcher; put it first on PATH."""
    return engine_root(home, version) / "bin"


def parse_version(text: str) -> tuple[int, int, int] | None:
    """`v3.260.0` (or `3.260.0-dev`) → (3, 260, 0); None when it is not a version."""
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def binary_version(binary: Path) -> tuple[int, int, int] | None:
    """The version a `pulumi` binary reports, or None when it does not run."""
    try:
        out = subprocess.run(
            [str(binary), "version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_version(out)


STAMP = ".installed"


def is_installed(home: Path | None = None, version: str = PULUMI_VERSION,
                 check: bool = False) -> bool:
    """True when the engine dir holds an engine of at least `version` and the launcher.

    Cheap by default (the stamp written after a verified install); `check` runs the binary.
    """
    return _installed_in(engine_bin(home, version), version, check)


def find_engine(home: Path | None = None, version: str = PULUMI_VERSION) -> Path | None:
    """The `bin` folder of an installed engine of `version`: the home's, else the default
    home's (`make setup` installs there; a `DSTACK_HOME` set later uses it too); None when
    neither has one."""
    for root in dict.fromkeys([engine_root(home, version), engine_root(default_home(), version)]):
        if _installed_in(root / "bin", version, check=False):
            return root / "bin"
    return None


def _installed_in(bin_dir: Path, version: str, check: bool) -> bool:
    """Whether `bin_dir` holds the engine and the launcher (`check`: and the engine runs)."""
    if not (bin_dir / LAUNCHER_NAME).exists() or not (bin_dir / "pulumi").exists():
        return False
    if not check:
        return (bin_dir / STAMP).exists()
    found, wanted = binary_version(bin_dir / "pulumi"), parse_version(version)
    return found is not None and wanted is not None and found >= wanted


def write_launcher(bin_dir: Path) -> None:
    """Put the dynamic-provider launcher beside the engine, replacing an older one (or a link
    to Pulumi's own, which starts the SDK's slower host of the same resources)."""
    path = bin_dir / LAUNCHER_NAME
    if path.is_symlink() or not path.exists() or path.read_text() != LAUNCHER:
        with replacing(path) as tmp:  # renamed over the old one: never a moment without
            tmp.write_text(LAUNCHER)
            tmp.chmod(0o755)


def _say(msg: str) -> None:
    print(f"[engine] {msg}", file=sys.stderr, flush=True)


@contextmanager
def _install_lock(root: Path) -> Iterator[None]:
    """Serialise installs into the same engine dir across processes."""
    private_dir(root.parent)
    root.mkdir(exist_ok=True)
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def try_path(bin_dir: Path, version: str) -> bool:
    """a. Link a recent enough `pulumi` from PATH into `bin_dir`."""
    found = shutil.which("pulumi")
    if not found:
        _say("no pulumi on PATH")
        return False
    have, want = binary_version(Path(found)), parse_version(version)
    if have is None or want is None or have < want:
        _say(f"pulumi on PATH ({found}) is {have}, older than {version}: not used")
        return False
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / "pulumi"
    target.unlink(missing_ok=True)
    target.symlink_to(Path(found).resolve())
    _say(f"using pulumi {'.'.join(map(str, have))} from {found}")
    return True


def try_official(root: Path, version: str, timeout: float = OFFICIAL_TIMEOUT_S) -> bool:
    """b. The official installer (`PulumiCommand.install`), bounded by `timeout` seconds."""
    _say(f"trying the official installer (time-out {timeout:.0f}s)")
    code = (
        "import sys; from dstack.stacks.engine import install_official; "
        "install_official(sys.argv[1], sys.argv[2])"
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, str(root), version],
            capture_output=True, text=True, timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        _say("the official installer timed out")
        return False
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        _say(f"the official installer failed: {last[:300]}")
        return False
    return True


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed:\n{proc.stderr.strip()[-2000:]}")
    return proc.stdout


def _replace_lines(gomod: str) -> list[str]:
    """The `replace` directives of a go.mod whose targets are modules, not local folders."""
    lines: list[str] = []
    in_block = False
    for raw in gomod.splitlines():
        line = raw.split("//")[0].strip()
        if line.startswith("replace ("):
            in_block = True
            continue
        if in_block and line == ")":
            in_block = False
            continue
        body = line[len("replace "):] if line.startswith("replace ") else line if in_block else ""
        if "=>" in body:
            target = body.split("=>", 1)[1].strip()
            if not target.startswith((".", "/")):
                lines.append(f"replace {body}")
    return lines


def _go_line(gomod: str) -> str:
    m = re.search(r"^go\s+(\S+)", gomod, re.M)
    return m[1] if m else "1.22"


def try_go_build(bin_dir: Path, version: str) -> bool:
    """c. Build `pulumi` from Go modules in a throw-away wrapper module."""
    if not shutil.which("go"):
        _say("no Go toolchain on PATH: cannot build the engine from Go modules")
        return False
    tag = f"v{version}"
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN=os.environ.get("GOTOOLCHAIN", "auto"))
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="dstack-pulumi-build-") as tmp:
            work = Path(tmp)
            _say(f"reading go.mod of {PKG_MODULE}@{tag}")
            info = json.loads(_go(["mod", "download", "-json", f"{PKG_MODULE}@{tag}"], work, env))
            if info.get("Error"):
                raise RuntimeError(info["Error"])
            pkg_gomod = Path(info["GoMod"]).read_text()
            gomod = "\n".join(
                [
                    "module local/pulumi-cli",
                    "",
                    f"go {_go_line(pkg_gomod)}",
                    "",
                    f"require (\n\t{PKG_MODULE} {tag}\n\t{SDK_MODULE} {tag}\n)",
                    "",
                    *_replace_lines(pkg_gomod),
                    "",
                ]
            )
            (work / "go.mod").write_text(gomod)
            _say("resolving modules (go get -tool); a cold cache downloads a few hundred MB")
            _go(["get", "-tool", f"{PKG_MODULE}/cmd/pulumi@{tag}"], work, env)
            resolved = _go(["list", "-m", PKG_MODULE, SDK_MODULE], work, env).split()
            if resolved != [PKG_MODULE, tag, SDK_MODULE, tag]:
                raise RuntimeError(f"modules resolved to {resolved}, not {tag}")
            _say("building (several minutes on 2 cores when Go's build cache is cold)")
            ldflags = f"-s -w -X {SDK_MODULE}/go/common/version.Version={tag}"
            with replacing(bin_dir / "pulumi") as out:
                _go(
                    ["build", "-trimpath", "-ldflags", ldflags, "-o", str(out),
                     f"{PKG_MODULE}/cmd/pulumi"],
                    work, env,
                )
    except (RuntimeError, OSError, ValueError) as exc:
        _say(f"the Go build failed: {exc}")
        return False
    _say(f"built pulumi {tag} in {time.monotonic() - started:.0f}s")
    return True


def ensure_engine(home: Path | None = None, version: str = PULUMI_VERSION) -> Path:
    """Make sure the engine of `version` is installed; return its `bin` folder."""
    root, bin_dir = engine_root(home, version), engine_bin(home, version)
    shared = engine_root(default_home(), version)
    if shared != root and not root.exists() and is_installed(default_home(), version):
        root.parent.mkdir(parents=True, exist_ok=True)  # the default home's engine will do
        root.symlink_to(shared, target_is_directory=True)
        _say(f"pulumi {version}: using the engine of {default_home()} ({shared})")
    with _install_lock(root):
        if is_installed(home, version, check=True):
            write_launcher(bin_dir)
            (bin_dir / STAMP).write_text(version + "\n")
            _say(f"pulumi {version} already installed in {bin_dir}")
            return bin_dir
        bin_dir.mkdir(parents=True, exist_ok=True)
        ok = (
            try_path(bin_dir, version)
            or try_official(root, version)
            or try_go_build(bin_dir, version)
        )
        if ok:
            write_launcher(bin_dir)
        if ok and is_installed(home, version, check=True):
            (bin_dir / STAMP).write_text(version + "\n")
        else:
            raise EngineMissingError(
                f"could not provide the Pulumi engine {version} in {bin_dir}",
                "Put pulumi >= "
                f"{version} on PATH, or install Go >= 1.22 so it can be built from Go "
                "modules, then run `make engine` again.",
            )
    _say(f"pulumi {version} ready in {bin_dir}")
    return bin_dir


def main() -> int:
    """Entry point of `python -m dstack.stacks.engine_install`."""
    try:
        ensure_engine()
    except EngineMissingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

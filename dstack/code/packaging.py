"""Packaging: the working directory of a run as one deterministic, content-addressed archive.

Inside a git work tree the archive holds what `git ls-files --cached --others
--exclude-standard` lists from the root: tracked files with their uncommitted changes, plus
untracked files git does not ignore. Outside git it holds every file under the root,
honouring a `.gitignore` there. Both honour `.dstackignore` (gitignore syntax; in a git
tree its `!` cannot bring back what git ignores) and always leave out `.git`, `.venv`,
`__pycache__` and `.dstack/cache`. A dstack home, a store and Pulumi state are never
packaged, and credentials only when `.dstackignore` asks for them (`dstack.code.sensitive_paths`).

`scan_code` lists what would be packaged and checks the limits, writing nothing;
`write_code` then writes the archive. The store key is `code/<sha256>.tar.gz`.
"""

from __future__ import annotations

import heapq
import os
import stat
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dstack.code.archive import Entry, write_archive
from dstack.code.ignore_rules import IgnoreRules
from dstack.code.sensitive_paths import Guard
from dstack.errors import DstackError, UsageError
from dstack.files import temp_beside
from dstack.sizes import format_decimal
from dstack.store.keys import code_key

__all__ = ["CodeArchive", "CodeInventory", "IgnoreRules", "package_code", "scan_code",
           "write_code"]

DSTACKIGNORE = ".dstackignore"
DEFAULT_MAX_BYTES = 100_000_000
"""100 MB; a profile's `max_code_size` setting changes it."""
DEFAULT_MAX_FILES = 50_000
ALWAYS_SKIPPED = (".git", ".venv/", "__pycache__/", "/.dstack/cache/")
_GIT_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX")


@dataclass(frozen=True, slots=True)
class CodeInventory:
    """What packaging a working directory would take, before any archive is written."""

    root: Path
    entries: list[Entry]
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def files(self) -> int:
        """How many files (and symlinks) would be packaged."""
        return len(self.entries)

    @property
    def bytes(self) -> int:
        """Their size in bytes, before compression."""
        return sum(e.size for e in self.entries)


@dataclass(frozen=True, slots=True)
class CodeArchive:
    """The packaged working directory: the archive on disk and what went into it."""

    path: Path
    sha256: str
    files: int
    size: int
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def store_key(self) -> str:
        """Where the archive lives in a store."""
        return code_key(self.sha256)


def scan_code(root: Path, *, max_bytes: int = DEFAULT_MAX_BYTES,
              max_files: int = DEFAULT_MAX_FILES, protect: Iterable[Path] = (),
              home: Path | None = None, profile: str = "PROFILE") -> CodeInventory:
    """What packaging `root` takes; writes nothing.

    `skipped` lists paths left out though not ignored: symlinks leading outside `root`,
    sockets, fifos, devices, nested repositories. `warnings` has one line per kind of what
    is never packaged or a credential not asked for. `home` (default: the one in use) and
    `protect` (the profile's store folder) are never packaged either. Raises UsageError,
    naming the largest folders and how to raise the limit of `profile`, when the content is
    over `max_bytes` or `max_files`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DstackError(f"{root} is not a folder.", hint="Run dstack from your project folder.")
    asks = IgnoreRules.from_file(root / DSTACKIGNORE)
    guard = Guard(root, asks, protect, home)
    always = IgnoreRules.from_lines(ALWAYS_SKIPPED)
    listed = _git_files(root)
    user = asks if listed is not None else IgnoreRules.from_file(root / ".gitignore") + asks

    def ignored(relpath: str, is_dir: bool) -> bool:
        return (always.ignored(relpath, is_dir) or user.ignored(relpath, is_dir)
                or guard.excluded(relpath, is_dir))

    skipped: list[str] = []
    candidates = _walk(root, ignored, skipped) if listed is None else listed
    entries = _entries(root, candidates, ignored, skipped)
    _check_limits(root, entries, max_bytes, max_files, profile)
    return CodeInventory(root, entries, sorted(skipped), guard.warnings())


def write_code(inventory: CodeInventory, out_dir: Path | None = None) -> CodeArchive:
    """Archive what `inventory` lists as `<out_dir>/<sha256>.tar.gz` (`out_dir` defaults to
    a new temporary folder)."""
    out_dir = Path(tempfile.mkdtemp(prefix="dstack-code-")) if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(out_dir / "code.tar.gz")  # its name is its hash, known once written
    tmp.touch(mode=0o600, exist_ok=False)
    try:
        digest = write_archive(inventory.entries, tmp)
        final = out_dir / f"{digest}.tar.gz"
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return CodeArchive(final, digest, inventory.files, final.stat().st_size, inventory.skipped,
                       inventory.bytes, inventory.warnings)


def package_code(root: Path, out_dir: Path | None = None, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_files: int = DEFAULT_MAX_FILES,
                 protect: Iterable[Path] = ()) -> CodeArchive:
    """`scan_code` then `write_code`: the working directory `root` as an archive."""
    return write_code(scan_code(root, max_bytes=max_bytes, max_files=max_files,
                                protect=protect), out_dir)


def _git_files(root: Path) -> list[str] | None:
    """What git would commit from `root` (relative to it), or None outside a git work tree."""
    env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV}
    try:
        probe = subprocess.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                               capture_output=True, text=True, env=env, check=False)
    except FileNotFoundError:  # git is not installed: treat as a plain folder
        return None
    if probe.returncode != 0:
        if "safe.directory" in probe.stderr:
            raise DstackError(f"git refuses to read {root}: {probe.stderr.strip()}",
                              hint=f"Run: git config --global --add safe.directory {root}")
        return None
    if probe.stdout.strip() != "true":
        return None
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, env=env, check=False)
    if listing.returncode != 0:
        raise DstackError(f"git ls-files failed in {root}: {os.fsdecode(listing.stderr).strip()}",
                          hint="Check that `git status` works in this folder.")
    names = (os.fsdecode(raw).rstrip("/") for raw in listing.stdout.split(b"\0") if raw)
    return list(dict.fromkeys(names))


def _walk(root: Path, ignored: Callable[[str, bool], bool], skipped: list[str]) -> list[str]:
    """Every path under `root` that is not a folder, pruning ignored folders."""
    found: list[str] = []
    folders = [""]
    while folders:
        folder = folders.pop()
        try:
            with os.scandir(root / folder) as it:
                children = list(it)
        except PermissionError:
            skipped.append(folder)
            continue
        for child in children:
            rel = f"{folder}/{child.name}" if folder else child.name
            if child.is_dir(follow_symlinks=False):
                if not ignored(rel, True):
                    folders.append(rel)
            else:
                found.append(rel)
    return found


def _entries(root: Path, candidates: Iterable[str], ignored: Callable[[str, bool], bool],
             skipped: list[str]) -> list[Entry]:
    """Archive entries for the candidate paths that exist and are not ignored."""
    root_real = os.path.realpath(root)
    entries: list[Entry] = []
    for rel in candidates:
        full = os.path.join(root, rel)
        try:
            st = os.lstat(full)
        except (FileNotFoundError, NotADirectoryError):  # tracked but deleted from disk
            continue
        if ignored(rel, stat.S_ISDIR(st.st_mode)):
            continue
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            skipped.append(rel)
            continue
        if stat.S_ISREG(st.st_mode):
            entries.append(Entry(rel, Path(full), st.st_size, bool(st.st_mode & 0o111)))
        elif stat.S_ISLNK(st.st_mode) and (link := _link_inside(full, root_real)) is not None:
            entries.append(Entry(rel, link=link))
        else:  # a link leading outside, a folder (submodule, nested repo), socket, fifo, device
            skipped.append(rel)
    return entries


def _link_inside(path: str, root_real: str) -> str | None:
    """The target to store for the symlink at `path`, or None when it leads outside root.

    The target is rewritten relative to the link's folder, pointing at the real location, so
    absolute links into the project keep working wherever the archive is extracted.
    """
    target = os.path.realpath(path)
    if target != root_real and not target.startswith(root_real.rstrip(os.sep) + os.sep):
        return None
    return os.path.relpath(target, os.path.realpath(os.path.dirname(path))).replace(os.sep, "/")


def _check_limits(root: Path, entries: list[Entry], max_bytes: int, max_files: int,
                  profile: str) -> None:
    """Refuse a working directory over the limits, naming what to leave out."""
    total = sum(e.size for e in entries)
    if total <= max_bytes and len(entries) <= max_files:
        return
    lines = [f"The project folder {root} is too big to package: {format_decimal(total)} in "
             f"{len(entries):,} files; the limit is {format_decimal(max_bytes)} and "
             f"{max_files:,} files."]
    folders: Counter[str] = Counter()
    for e in entries:
        if "/" in e.path:
            folders[e.path.split("/")[0] + "/"] += e.size
    if folders:
        lines.append("Largest top-level folders: " + ", ".join(
            f"{name} ({format_decimal(size)})" for name, size in folders.most_common(5)))
    biggest = heapq.nlargest(5, entries, key=lambda e: e.size)
    lines.append("Biggest files: " + ", ".join(
        f"{e.path} ({format_decimal(e.size)})" for e in biggest))
    if len(entries) > max_files:
        crowded = Counter(e.path.split("/")[0] + "/" for e in entries if "/" in e.path)
        lines.append("Folders with the most files: " + ", ".join(
            f"{name} ({count:,} files)" for name, count in crowded.most_common(5)))
    raise UsageError("\n".join(lines), (
        f"List data, checkpoints and environments in {root / DSTACKIGNORE} (gitignore syntax) "
        "to leave them out of the code archive, and share data through artifacts; or raise "
        f"the limit: `dstack config set {profile} max_code_size 500MB`."))

"""Packaging: the working directory of a run as one deterministic, content-addressed archive.

Inside a git work tree the archive holds what `git ls-files --cached --others
--exclude-standard` lists from the root: tracked files with their uncommitted changes, plus
untracked files git does not ignore. Outside git it holds every file under the root,
honouring a `.gitignore` there. Both honour `.dstackignore` (gitignore syntax; in a git
tree its `!` cannot bring back what git ignores) and always leave out `.git`, `.venv`,
`__pycache__` and `.dstack/cache`. The store key is `code/<sha256>.tar.gz`.
"""

from __future__ import annotations

import heapq
import os
import re
import stat
import subprocess
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from dstack.archive import Entry, write_archive
from dstack.errors import DstackError

DSTACKIGNORE = ".dstackignore"
DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_FILES = 50_000
ALWAYS_SKIPPED = (".git", ".venv/", "__pycache__/", "/.dstack/cache/")
_GIT_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_PREFIX")


@dataclass(frozen=True, slots=True)
class _Rule:
    regex: re.Pattern[str]
    negated: bool
    dir_only: bool


class IgnoreRules:
    """Gitignore-syntax rules over POSIX paths relative to one root; the last match wins.

    Supports `#` comments, blank lines, `!` negation, trailing `/` (folders only), a `/` at
    the start or in the middle (anchored to the root), `*`, `?`, `[...]`, `**` and `\\`
    escapes. As in git, nothing inside an ignored folder can be brought back by `!`.
    """

    def __init__(self, rules: Iterable[_Rule] = ()) -> None:
        self._rules = tuple(rules)
        self._folders: dict[str, bool] = {}

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> IgnoreRules:
        """Rules from the lines of an ignore file."""
        return cls(rule for line in lines if (rule := _compile(line)) is not None)

    @classmethod
    def from_file(cls, path: Path) -> IgnoreRules:
        """Rules from an ignore file; no rules when it does not exist."""
        try:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
        except (FileNotFoundError, NotADirectoryError):
            return cls()
        return cls.from_lines(text.splitlines())

    def __add__(self, other: IgnoreRules) -> IgnoreRules:
        """Both rule sets; `other` is read after `self`, so it wins on conflicts."""
        return IgnoreRules(self._rules + other._rules)

    def __len__(self) -> int:
        return len(self._rules)

    def ignored(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether `relpath` is ignored, by a rule of its own or through an ignored folder."""
        parts = relpath.strip("/").split("/")
        for i in range(1, len(parts)):
            if self._folder_ignored("/".join(parts[:i])):
                return True
        path = "/".join(parts)
        return self._folder_ignored(path) if is_dir else self._match(path, False)

    def _folder_ignored(self, relpath: str) -> bool:
        hit = self._folders.get(relpath)
        if hit is None:
            hit = self._folders[relpath] = self._match(relpath, True)
        return hit

    def _match(self, relpath: str, is_dir: bool) -> bool:
        for rule in reversed(self._rules):
            if (is_dir or not rule.dir_only) and rule.regex.fullmatch(relpath):
                return not rule.negated
        return False


def _compile(line: str) -> _Rule | None:
    """One line of an ignore file as a rule, or None for blanks and comments."""
    stripped = line.rstrip(" \t\r\n")
    if stripped.endswith("\\") and len(stripped) < len(line.rstrip("\r\n")):
        stripped += " "  # "\ " keeps one trailing space
    if not stripped or stripped.startswith("#"):
        return None
    negated = stripped.startswith("!")
    pattern = stripped[1:] if negated else stripped
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    if not pattern:
        return None
    body = _translate(pattern)
    regex = body if anchored else f"(?:.*/)?{body}"
    return _Rule(re.compile(regex, re.DOTALL), negated, dir_only)


def _translate(pattern: str) -> str:
    """A slash-separated glob as a regular expression; `**` spans folders."""
    segments = pattern.split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
        else:
            out.append(_translate_segment(segment) + ("" if last else "/"))
    return "".join(out)


def _translate_segment(segment: str) -> str:
    """One path segment of a glob: `*` and `?` never match `/`."""
    out: list[str] = []
    i, n = 0, len(segment)
    while i < n:
        c = segment[i]
        if c == "*":
            while i + 1 < n and segment[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(segment[i]))
        elif c == "[" and (end := _class_end(segment, i)) > 0:
            body = segment[i + 1:end]
            negated = body[:1] in ("!", "^")
            body = body[1:] if negated else body
            chars = "".join("\\" + ch if ch in "\\[]^" else ch for ch in body)
            out.append(f"[^/{chars}]" if negated else f"(?!/)[{chars}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def _class_end(segment: str, start: int) -> int:
    """Index of the `]` closing the class opened at `start`, or -1 when it is not closed."""
    j = start + 1
    if j < len(segment) and segment[j] in "!^":
        j += 1
    if j < len(segment) and segment[j] == "]":
        j += 1
    return segment.find("]", j)


@dataclass(frozen=True, slots=True)
class CodeArchive:
    """The packaged working directory: the archive on disk and what went into it."""

    path: Path
    sha256: str
    files: int
    size: int
    skipped: list[str] = field(default_factory=list)

    @property
    def store_key(self) -> str:
        """Where the archive lives in a store."""
        return f"code/{self.sha256}.tar.gz"


def package_code(root: Path, out_dir: Path | None = None, *,
                 max_bytes: int = DEFAULT_MAX_BYTES,
                 max_files: int = DEFAULT_MAX_FILES) -> CodeArchive:
    """Archive the working directory `root` as `<out_dir>/<sha256>.tar.gz`.

    `out_dir` defaults to a new temporary folder. `skipped` lists paths left out though not
    ignored: symlinks leading outside `root`, sockets, fifos, devices, nested repositories.
    Raises DstackError, naming the biggest files, when the content is over `max_bytes` or
    `max_files`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DstackError(f"{root} is not a folder.", hint="Run dstack from your project folder.")
    always = IgnoreRules.from_lines(ALWAYS_SKIPPED)
    listed = _git_files(root)
    if listed is None:
        user = IgnoreRules.from_file(root / ".gitignore") + IgnoreRules.from_file(
            root / DSTACKIGNORE)
    else:
        user = IgnoreRules.from_file(root / DSTACKIGNORE)

    def ignored(relpath: str, is_dir: bool) -> bool:
        return always.ignored(relpath, is_dir) or user.ignored(relpath, is_dir)

    skipped: list[str] = []
    candidates = _walk(root, ignored, skipped) if listed is None else listed
    entries = _entries(root, candidates, ignored, skipped)
    _check_limits(root, entries, max_bytes, max_files)
    out_dir = Path(tempfile.mkdtemp(prefix="dstack-code-")) if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".code-", suffix=".tar.gz.part", dir=out_dir)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        digest = write_archive(entries, tmp)
        final = out_dir / f"{digest}.tar.gz"
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return CodeArchive(final, digest, len(entries), final.stat().st_size, sorted(skipped))


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


def _check_limits(root: Path, entries: list[Entry], max_bytes: int, max_files: int) -> None:
    """Refuse a working directory over the limits, naming what to ignore."""
    total = sum(e.size for e in entries)
    if total <= max_bytes and len(entries) <= max_files:
        return
    biggest = heapq.nlargest(5, entries, key=lambda e: e.size)
    lines = [f"The working directory {root} is too big to package: {len(entries):,} files, "
             f"{_human(total)} (the limit is {max_files:,} files and {_human(max_bytes)}).",
             "Biggest files: " + ", ".join(f"{e.path} ({_human(e.size)})" for e in biggest)]
    if len(entries) > max_files:
        crowded = Counter(e.path.split("/")[0] + "/" for e in entries if "/" in e.path)
        lines.append("Folders with the most files: " + ", ".join(
            f"{name} ({count:,} files)" for name, count in crowded.most_common(5)))
    raise DstackError("\n".join(lines), hint=(
        f"List data, checkpoints and environments in {root / DSTACKIGNORE} (gitignore syntax) "
        "to leave them out of the code archive; share data through artifacts instead."))


def _human(size: int) -> str:
    """A byte count for people: 1.5 GiB."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"

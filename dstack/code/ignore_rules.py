"""Ignore rules in gitignore syntax, read from `.gitignore` and `.dstackignore` files."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


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

    def matches(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether a rule (negated or not) names `relpath` itself; its folders are not read."""
        return self._last(relpath.strip("/"), is_dir) is not None

    def negated(self, relpath: str, is_dir: bool = False) -> bool:
        """Whether the last rule naming `relpath` itself is a `!` negation: it asks for it."""
        rule = self._last(relpath.strip("/"), is_dir)
        return rule is not None and rule.negated

    def _last(self, relpath: str, is_dir: bool) -> _Rule | None:
        for rule in reversed(self._rules):
            if (is_dir or not rule.dir_only) and rule.regex.fullmatch(relpath):
                return rule
        return None

    def _folder_ignored(self, relpath: str) -> bool:
        hit = self._folders.get(relpath)
        if hit is None:
            hit = self._folders[relpath] = self._match(relpath, True)
        return hit

    def _match(self, relpath: str, is_dir: bool) -> bool:
        rule = self._last(relpath, is_dir)
        return rule is not None and not rule.negated


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

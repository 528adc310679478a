"""Env files (`dstack run --env-file FILE`): `KEY=VALUE` lines for the job's environment.

Blank lines and lines starting with `#` are skipped; a line may start with `export `; a value
may be in double quotes (`\\n`, `\\t`, `\\"`, `\\\\`, `\\$` are escapes) or single quotes
(taken as written); an unquoted value ends at ` #`. `$VAR` is not expanded. A later line
wins. The values may be secrets, so an error names the file and line, never the line's text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from dstack.errors import UsageError

FLAG = "--env-file"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}
_HINT = ("Write one KEY=VALUE per line (# starts a comment; quote a value with spaces and "
         "#: KEY=\"a # b\").")


class _BadLine(ValueError):
    """What is wrong with a line (its text is never part of it)."""


def _double_quoted(rest: str) -> tuple[str, str]:
    """The value of `"..."` at the start of `rest`, and what follows its closing quote."""
    out, i = [], 1
    while i < len(rest):
        c = rest[i]
        if c == "\\" and i + 1 < len(rest):
            nxt = rest[i + 1]
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
            i += 2
        elif c == '"':
            return "".join(out), rest[i + 1:]
        else:
            out.append(c)
            i += 1
    raise _BadLine("the value's \" quote is not closed (a value is on one line)")


def _value(rest: str) -> str:
    """The value of a line from what follows `=`."""
    rest = rest.strip()
    if rest[:1] in ('"', "'"):
        if rest[0] == '"':
            value, after = _double_quoted(rest)
        else:
            end = rest.find("'", 1)
            if end < 0:
                raise _BadLine("the value's ' quote is not closed (a value is on one line)")
            value, after = rest[1:end], rest[end + 1:]
        after = after.strip()
        if after and not after.startswith("#"):
            raise _BadLine("unexpected text after the closing quote")
        return value
    return re.sub(r"\s#.*$", "", rest).rstrip()


def parse_env_file(text: str, source: str) -> dict[str, str]:
    """The variables of env file text; `source` names it in errors (UsageError, exit 2)."""
    env: dict[str, str] = {}
    for number, raw in enumerate(text.removeprefix("\ufeff").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if re.match(r"^export\s", line):
            line = line[len("export"):].lstrip()
        key, eq, rest = line.partition("=")
        try:
            if not eq:
                raise _BadLine("expected KEY=VALUE")
            if not _NAME.match(key.strip()):
                raise _BadLine("the name before = is not a variable name (letters, digits "
                               "and _, not starting with a digit)")
            env[key.strip()] = _value(rest)
        except _BadLine as exc:
            raise UsageError(f"{source}:{number}: {exc}", _HINT) from None
    return env


def read_env_files(paths: Sequence[str | Path]) -> dict[str, str]:
    """The variables of the env files `paths`, a later file winning (UsageError, exit 2)."""
    env: dict[str, str] = {}
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise UsageError(f"{FLAG} {path}: no such file",
                             f"Give the path of a file of KEY=VALUE lines, e.g. {FLAG} .env.",
                             ) from None
        except IsADirectoryError:
            raise UsageError(f"{FLAG} {path}: is a folder, not a file", _HINT) from None
        except OSError as exc:
            raise UsageError(f"{FLAG} {path}: {exc.strerror}", None) from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{FLAG} {path}: not UTF-8 text", _HINT) from None
        env.update(parse_env_file(text, str(path)))
    return env

"""Problems in a workflow spec: what is wrong, in which file, at which line and field path.

A `Problem` prints as `file:line:column: field.path: what is wrong`; `spec_error` turns a list
of them into the one `SpecError` that `dstack.spec.loader` and `dstack.spec.positions` raise.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dstack.errors import SpecError

MAX_PROBLEMS = 20
SCHEMA_HINT = "`dstack schema` prints every field a workflow may have."

FieldPath = tuple[str | int, ...]
Locate = Callable[[FieldPath, bool], "tuple[int, int] | None"]


def format_path(path: FieldPath) -> str:
    """`("workflows", 1, "resources", "gpu")` → `workflows[1].resources.gpu`."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a spec, with where it is."""

    origin: str
    path: FieldPath
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.origin if self.line is None else f"{self.origin}:{self.line}:{self.column}"
        field_path = format_path(self.path)
        return (
            f"{where}: {field_path}: {self.message}" if field_path else f"{where}: {self.message}"
        )

    @classmethod
    def at(cls, origin: str, locate: Locate | None, path: FieldPath, message: str,
           key: bool = False) -> Problem:
        """A problem with the field at `path`, at its line and column when `locate` knows
        them (`key`: the position of the key itself, not of its value)."""
        position = locate(path, key) if locate else None
        return cls(origin, path, message, *(position or (None, None)))


def spec_error(problems: Sequence[Problem], hint: str | None = SCHEMA_HINT) -> SpecError:
    """One `SpecError` listing `problems`, one a line, the first one first."""
    lines = [str(problem) for problem in dict.fromkeys(problems)]
    if len(lines) > MAX_PROBLEMS:
        lines = [*lines[:MAX_PROBLEMS], f"... and {len(lines) - MAX_PROBLEMS} more problems"]
    return SpecError("\n".join(lines), hint)

"""Field types of the workflow spec: the annotated types workflow and provider fields use.

Each type carries its validator and, where pydantic cannot infer it, its JSON Schema:
`Count`, `Size` ("16GB"; a bare number is refused under `UNITS_REQUIRED`), `Args` (a string
split like a shell or a list), `Version`, `Scalar`, `relative_path(...)`, and the environment
types `EnvName`, `EnvItem` (`KEY=VALUE`, whose `$VAR` references `interpolate` fills in at run
time) and `Environment`. `describe` shows a value the way every spec message does.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Mapping
from typing import Annotated, cast

from pydantic import (
    AfterValidator,
    BeforeValidator,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
)

from dstack.sizes import EXAMPLES, no_unit_message, parse_size

UNITS_REQUIRED = "units_required"
"""Validation context key: sizes are what a person wrote, so a number without a unit (YAML's
`memory: 16`) is refused. Without it a number is bytes, as a run's record keeps sizes."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_VAR = re.compile(
    r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*)|(\{))"
)


def describe(value: object) -> str:
    """A value as a message shows it: `"lots"`, `the number 4`, `a list`, `true`."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return f"the number {value}"
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 60 else f'"{value[:57]}..."'
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"a {type(value).__name__}"


def _text(value: object) -> object:
    """Numbers and booleans as the text a shell would see; anything else unchanged."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return str(value)
    return value


def _count(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number, got {describe(value)}")
    return value


def _size(value: object, info: ValidationInfo[Mapping[str, object] | None]) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and \
            (info.context or {}).get(UNITS_REQUIRED):
        raise ValueError(no_unit_message(value))
    size = parse_size(cast("str | int", value))
    if size == 0:
        raise ValueError(f"a size must be more than 0; use e.g. {EXAMPLES}")
    return size


def _split_args(value: object) -> object:
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as e:
            raise ValueError(f"cannot split {describe(value)} into arguments: {e}") from None
    if isinstance(value, list):
        return [_text(item) for item in value]
    return value


def _version(value: object) -> object:
    if isinstance(value, float):
        raise ValueError(
            f'write the version in quotes, e.g. "3.10": YAML reads {value} as a number'
        )
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and not re.fullmatch(r"[0-9][0-9A-Za-z.+_-]*", value):
        raise ValueError(f'{describe(value)} is not a version; write e.g. "3.11" or "4.0.2"')
    return value


def relative_path(where: str) -> AfterValidator:
    """Validator of a path relative to `where`: not empty, not absolute, no NUL, no `..` escape.

    The path is returned normalised (`data/./x/` → `data/x`).
    """

    def check(path: str) -> str:
        if not path.strip():
            raise ValueError("the path is empty")
        if "\0" in path:
            raise ValueError("the path contains a NUL character")
        if path.startswith(("/", "~")):
            raise ValueError(f'"{path}" is not a relative path; give a path inside {where}')
        normal = posixpath.normpath(path)
        if normal == ".." or normal.startswith("../"):
            raise ValueError(f'"{path}" leads outside {where}; give a path inside it')
        return normal

    return AfterValidator(check)


def _env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise ValueError(
            f"{describe(name)} is not a valid environment variable name; use letters, digits "
            'and "_", not starting with a digit'
        )
    return name


def interpolate(text: str, outer: Mapping[str, str]) -> str:
    """`text` with `$VAR`, `${VAR}` and `${VAR:-default}` replaced from `outer`; `$$` is `$`.

    An unset variable becomes the empty string, as in a shell. A lone `$` stays as it is.
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            return "$"
        if match.group(5):
            raise ValueError(f'bad variable reference in "{text}"; write ${{NAME}} or $NAME')
        name = match.group(2) or match.group(4)
        value = outer.get(name, "")
        if match.group(3) is not None and not value:
            return match.group(3)
        return value

    return _VAR.sub(replace, text)


def _env_item(item: str) -> str:
    key, eq, value = item.partition("=")
    if not eq:
        raise ValueError(f'"{item}" is not KEY=VALUE; write e.g. "{item}=value"')
    _env_name(key)
    interpolate(value, {})  # rejects malformed `${...}` now rather than at run time
    return item


def _environment(value: object) -> object:
    if isinstance(value, Mapping):
        return {key: _text(item) for key, item in value.items()}
    return value


def _check_env_names(mapping: dict[str, str]) -> dict[str, str]:
    for key in mapping:
        _env_name(key)
    return mapping


Count = Annotated[int, BeforeValidator(_count)]
Size = Annotated[
    int,
    BeforeValidator(_size),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*(\d+(\.\d*)?|\.\d+)\s*[A-Za-z]+\s*$",
            "examples": ["16GB", "512MiB"],
        }
    ),
]
Args = Annotated[
    list[str],
    BeforeValidator(_split_args),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}),
]
Version = Annotated[
    str,
    BeforeValidator(_version),
    WithJsonSchema({"type": "string", "pattern": "^[0-9][0-9A-Za-z.+_-]*$"}),
]
EnvName = Annotated[str, AfterValidator(_env_name)]
EnvItem = Annotated[str, AfterValidator(_env_item)]
Environment = Annotated[
    dict[EnvName, str], BeforeValidator(_environment), AfterValidator(_check_env_names)
]


def _scalar(value: object) -> str | int | float | bool:
    if isinstance(value, (str, int, float, bool)):
        return value
    raise ValueError(f"expected text, a number or true/false, got {describe(value)}")


Scalar = Annotated[
    str | int | float | bool,
    PlainValidator(_scalar),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]

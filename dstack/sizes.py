"""Sizes of memory and disk: `parse_size("16GB")` → bytes, `format_size(bytes)` → text.

Units (case-insensitive, an optional space between number and unit, decimals allowed):

- `B` — bytes;
- `KB`, `MB`, `GB`, `TB` — decimal, powers of 1000 (the SI meaning);
- `KiB`, `MiB`, `GiB`, `TiB` — binary, powers of 1024;
- `K`, `M`, `G`, `T` — binary, powers of 1024, as Docker reads `--shm-size 1g`.

Text needs a unit: `"16"` is refused (it read as 16 bytes, which every machine has), and
bytes are written `16B`. An int is a count of bytes: that is how dstack itself keeps sizes in
a run's record; a workflow file's `memory: 16` is refused by the spec (`dstack.spec.fields`).
Decimal GB is at most 7% smaller than GiB, so `memory: 16GB` still fits a machine sold as
"16 GB" (which is 16 GiB).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from dstack.errors import UsageError

_UNITS: dict[str, int] = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "k": 1024,
    "m": 1024**2,
    "g": 1024**3,
    "t": 1024**4,
}
_DECIMAL = {"kB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
EXAMPLES = "512MB, 16GB, 1.5TiB, 8G"
UNIT_WORDS = frozenset(_UNITS)
"""The units in lower case: `16 GB` on a command line is two words, this is the second."""


class SizeError(UsageError, ValueError):
    """A size that cannot be read; a ValueError too, so pydantic validators report it."""


def parse_size(value: str | int) -> int:
    """Bytes in `value`: an int (bytes) or text such as `"16GB"`, `"1.5 GiB"`, `"512m"`.

    Raises `SizeError` naming the bad value and showing good ones. Text without a unit,
    negative sizes, fractions of a byte, booleans and unknown units are refused.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SizeError(f"expected a size such as {EXAMPLES}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise SizeError(f"a size cannot be negative, got {value}; use e.g. {EXAMPLES}")
        return value
    match = _SIZE.match(value)
    if not match:
        raise SizeError(f'invalid size "{value}": use a number and a unit, e.g. {EXAMPLES}')
    number, unit = match.groups()
    if not unit:
        raise SizeError(no_unit_message(value))
    multiplier = _UNITS.get(unit.lower())
    if multiplier is None:
        raise SizeError(
            f'invalid size "{value}": unknown unit "{unit}"; use B, KB, MB, GB, TB, '
            f"KiB, MiB, GiB, TiB or K, M, G, T, e.g. {EXAMPLES}"
        )
    try:
        exact = Decimal(number) * multiplier
    except InvalidOperation as e:  # pragma: no cover - the regex admits only decimals
        raise SizeError(f'invalid size "{value}": use e.g. {EXAMPLES}') from e
    if exact != exact.to_integral_value():
        raise SizeError(f'invalid size "{value}": not a whole number of bytes; use e.g. {EXAMPLES}')
    return int(exact)


def no_unit_message(number: object) -> str:
    """Why the size `number` (text or a number) without a unit is refused, and what to write."""
    return (f'invalid size "{number}": a size needs a unit, e.g. 16GB, 512MB, 1.5TB or 16GiB '
            "(KB, MB, GB, TB count in 1000s, KiB, MiB, GiB, TiB in 1024s; B is bytes)")


def format_size(size: int) -> str:
    """Short binary text for `size` bytes: `16GiB`, `1.5MiB`, `512B`."""
    for unit, multiplier in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= multiplier:
            text = f"{size / multiplier:.1f}".removesuffix(".0")
            return f"{text}{unit}"
    return f"{size}B"


def format_written(size: int) -> str:
    """`16GB` for whole decimal gigabytes (as users write them), else `format_size`."""
    return f"{size // 1000**3}GB" if size % 1000**3 == 0 else format_size(size)


def format_decimal(size: int, unit: str | None = None) -> str:
    """`size` bytes in decimal units, as `max_code_size: 500MB` reads them: `116.1 kB`; in
    `unit` (`kB`, `MB`, `GB` or `TB`) when given, with thousands separated: `1,500.0 GB`."""
    if unit is not None:
        return f"{size / _DECIMAL[unit]:,.1f} {unit}"
    if size < 1000:
        return f"{size} B"
    value = float(size)
    for name in ("kB", "MB", "GB"):
        value /= 1000
        if value < 999.95:
            return f"{value:.1f} {name}"
    return f"{value / 1000:.1f} TB"

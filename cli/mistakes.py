"""Command lines that click would read otherwise than the user meant, refused before it parses
them (exit 2):

- a unit as a word of its own after a flag's number (`--memory 16 GB`: `GB` went to the job);
- a flag close to one of the command's own, on a command that passes unknown flags to the job
  (`dstack run ... --artifacts out`: the job got `--artifacts`); after `--` nothing is checked;
- a boolean flag followed by a yes/no word (`ps --all true`: `true` became the run's name).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Protocol

from typer.core import TyperGroup, TyperOption

from dstack.errors import UsageError
from dstack.names import closest
from dstack.sizes import UNIT_WORDS

NEAR_FLAG = 0.8
"""How alike an unknown flag and one of the command's must be to refuse the unknown one.
`did_you_mean`'s 0.6 would take a script's `--data` for `--detach` and `--name` for
`--gpu-name`; 0.8 still catches `--artifacts`, `--deps`, `--detatch`, `--gpus`, `--profle`."""
BOOL_WORDS = frozenset({"true", "false", "yes", "no", "on", "off"})
HELP = ("-h", "--help")
_NUMBER = re.compile(r"^(\d+(\.\d*)?|\.\d+)$")


class _Command(Protocol):
    """What is read of a click command (typer's click is its own, private module: its class
    goes unnamed; groups are `TyperGroup`s and options `TyperOption`s)."""

    @property
    def params(self) -> Sequence[object]: ...
    @property
    def context_settings(self) -> Mapping[str, object]: ...


def _command_at(group: _Command, argv: Sequence[str]) -> tuple[_Command, list[str], str] | None:
    """The click command `argv` names, the words after its name and its name (`tags delete`);
    None when `argv` names none (click says so)."""
    command, i = group, 0
    names: list[str] = []
    while isinstance(command, TyperGroup):
        while i < len(argv) and argv[i].startswith("-"):
            i += 1  # the groups' own options are flags: --debug, --help
        if i == len(argv) or argv[i] not in command.commands:
            return None
        command, names, i = command.commands[argv[i]], [*names, argv[i]], i + 1
    return command, list(argv[i:]), " ".join(names)


def _options(command: _Command) -> dict[str, TyperOption]:
    """Each option word of `command` (`-a`, `--all`) → its click option."""
    return {word: param for param in command.params if isinstance(param, TyperOption)
            for word in [*param.opts, *param.secondary_opts]}


def _near_flag(flag: str, name: str, options: dict[str, TyperOption]) -> None:
    """Refuse `flag` when it is close to one of `options`."""
    longs = {word[2:]: word for word in [*options, *HELP] if word.startswith("--")}
    meant = closest(flag[2:].lower().replace("_", "-"), longs, cutoff=NEAR_FLAG)
    if meant is not None:
        raise UsageError(f"{flag} is not a flag of dstack {name}; did you mean {longs[meant]}?",
                         f"Write {longs[meant]}. To give {flag} to the job instead, put it "
                         f"after --: `dstack {name} ... -- {flag} ...`.")


def check_argv(group: _Command, argv: Sequence[str]) -> None:
    """Refuse `argv` (the words after `dstack`, up to a `run`'s `--`) when click would read it
    otherwise than meant; `group` is the click form of the app."""
    found = _command_at(group, argv)
    if found is None:
        return
    command, words, name = found
    options = _options(command)
    passes_unknown = bool((command.context_settings or {}).get("ignore_unknown_options"))
    i = 0
    while i < len(words) and words[i] != "--":
        flag, eq, inline = words[i].partition("=") if words[i].startswith("--") else \
            (words[i], "", "")
        option = options.get(flag)
        if option is None:
            if passes_unknown and flag.startswith("--") and len(flag) > 2 and flag not in HELP:
                _near_flag(flag, name, options)
            i += 1
        elif option.is_flag:
            after = words[i + 1] if i + 1 < len(words) and not eq else ""
            if after.lower() in BOOL_WORDS:
                raise UsageError(f'{flag} takes no value, but "{after}" follows it',
                                 f'Write {flag} alone for yes and leave it out for no; if '
                                 f'"{after}" is an argument, put it before {flag}.')
            i += 1
        else:
            value, i = (inline, i + 1) if eq else (
                words[i + 1] if i + 1 < len(words) else "", i + 2)
            unit = words[i] if i < len(words) else ""
            if _NUMBER.match(value) and unit.lower() in UNIT_WORDS:
                raise UsageError(f"{flag} {value} {unit}: write the size as one word, "
                                 f"{value}{unit}", f"The unit {unit} would go to the job as an "
                                 f"argument of its own: write {flag} {value}{unit}.")

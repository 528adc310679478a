"""YAML with line numbers: the data of a workflow file and where each key and value is.

`read_text` reads a workflow file as UTF-8, refusing huge, binary and undecodable files;
`parse_yaml` turns the text into plain data (safe YAML: no objects, merges and aliases
expanded) plus `Marks`, the 1-based line and column of every key and value by field path.
A syntax error becomes one `SpecError` `file:line:column: ...` showing the line.
"""

from __future__ import annotations

import codecs
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from dstack.errors import SpecError
from dstack.sizes import format_size
from dstack.spec.fields import describe
from dstack.spec.problems import FieldPath, Problem, spec_error

MAX_NODES = 200_000
_MERGE = "tag:yaml.org,2002:merge"


class _YamlLoader(Protocol):
    """What is used of PyYAML's (C)SafeLoader, which ships no types."""

    def get_single_node(self) -> yaml.Node | None: ...
    def construct_object(self, node: yaml.Node) -> object: ...
    def flatten_mapping(self, node: yaml.MappingNode) -> None: ...
    def dispose(self) -> None: ...


_Loader: Callable[[str], _YamlLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Marks:
    """1-based (line, column) of every value and key, by field path."""

    values: dict[FieldPath, tuple[int, int]] = field(default_factory=dict)
    keys: dict[FieldPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: FieldPath, key: bool = False) -> tuple[int, int] | None:
        if key and path in self.keys:
            return self.keys[path]
        while path not in self.values and path:
            path = path[:-1]
        return self.values.get(path)


def _at(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    """Plain data from a composed node tree, recording where each key and value is."""

    def __init__(self, loader: _YamlLoader, origin: str) -> None:
        self.loader, self.origin = loader, origin
        self.marks, self.problems, self.count = Marks(), list[Problem](), 0
        self.active: set[int] = set()

    def fail(self, node: yaml.Node, path: FieldPath, message: str) -> None:
        self.problems.append(Problem(self.origin, path, message, *_at(node)))

    def build(self, node: yaml.Node, path: FieldPath) -> object:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError(f"{self.origin}: more than {MAX_NODES} values (aliases expanding?)")
        self.marks.values[path] = _at(node)  # an own key after a `<<` merge wins
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if id(node) in self.active:
            self.fail(node, path, "an alias refers to the mapping or list it is inside")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.build(child, (*path, i)) for i, child in enumerate(node.value)]
            return self.mapping(node, path)
        finally:
            self.active.discard(id(node))

    def scalar(self, node: yaml.Node, path: FieldPath) -> object:
        try:
            return self.loader.construct_object(node)
        except (ValueError, TypeError, OverflowError) as e:  # e.g. a date like 2024-13-45
            self.fail(node, path, f'cannot read "{node.value}" ({e}); quote it to keep it text')
            return None

    def mapping(self, node: yaml.MappingNode, path: FieldPath) -> dict[str, object]:
        own = {id(key) for key, _ in node.value if key.tag != _MERGE}
        self.loader.flatten_mapping(node)  # `<<: *base` merges come first, own keys win
        result: dict[str, object] = {}
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            known = len(self.problems)
            key = self.scalar(key_node, path)
            if not isinstance(key, str):
                if len(self.problems) == known:
                    self.fail(key_node, path, f"a key must be text, not {describe(key)}; quote it")
                continue
            if id(key_node) in own:
                if key in lines:
                    message = f'duplicate key "{key}" (first at line {lines[key]})'
                    self.fail(key_node, (*path, key), message)
                lines[key] = _at(key_node)[0]
            self.marks.keys[(*path, key)] = _at(key_node)
            result[key] = self.build(value_node, (*path, key))
        return result


def _syntax_error(error: yaml.YAMLError, text: str, origin: str) -> SpecError:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    if mark is not None:
        line, column = mark.line + 1, mark.column + 1
    else:  # a ReaderError: a character YAML does not allow
        position = getattr(error, "position", 0)
        line = text.count("\n", 0, position) + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
    source = text.splitlines()[line - 1] if line <= len(text.splitlines()) else ""
    indent = source[: len(source) - len(source.lstrip(" \t"))]
    if "\t" in indent:
        message = "a tab is used for indentation; YAML allows only spaces"
    else:
        what = getattr(error, "problem", None) or str(error).splitlines()[0]
        context = getattr(error, "context", None)
        message = f"invalid YAML: {what}" + (f" ({context})" if context else "")
    shown = "".join(c if c.isprintable() or c == "\t" else "?" for c in source[:120])
    hint = f"{line:>5} | {shown}" if source.strip() else None
    return SpecError(f"{origin}:{line}:{column}: {message}", hint)


def parse_yaml(text: str, origin: str) -> tuple[object, Marks]:
    """The data in `text` (None when empty) and where each key and value is."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, Marks()
        builder = _Builder(loader, origin)
        data = builder.build(node, ())
    except yaml.YAMLError as e:
        raise _syntax_error(e, text, origin) from None
    except RecursionError:
        raise SpecError(f"{origin}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()
    if builder.problems:
        raise spec_error(builder.problems, None)
    return data, builder.marks


def read_text(path: Path, origin: str, max_bytes: int) -> str:
    """The UTF-8 text of a workflow file, refusing huge, binary and undecodable files."""
    too_big = f"{origin}: the file is over {format_size(max_bytes)}, the limit for a workflow file"
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise SpecError(f"{origin}: not a regular file")
        if path.stat().st_size > max_bytes:
            raise SpecError(too_big, "Is this the right file? Workflow files are small YAML.")
        with path.open("rb") as file:
            data = file.read(max_bytes + 1)
    except OSError as e:
        raise SpecError(f"{origin}: cannot read the file: {e.strerror or e}") from None
    if len(data) > max_bytes:
        raise SpecError(too_big, "Is this the right file? Workflow files are small YAML.")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SpecError(f"{origin}: the file is UTF-16", "Save it as UTF-8.")
    if b"\0" in data:
        raise SpecError(f"{origin}: this is a binary file (it has NUL bytes), not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        start = e.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        message = f"{origin}:{line}:{column}: not valid UTF-8 (byte 0x{data[start]:02x})"
        raise SpecError(message, "Save the file as UTF-8.") from None

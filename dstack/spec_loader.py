"""Loading workflows: `.dstack/workflows.yaml` and `.dstack/workflows/*.yaml` of a project.

`load_workflows(project_dir)` reads every file, keeps the line of every key and value, checks
each workflow against its provider's model (`dstack.spec.workflow_model`) and then checks them
together (unique names, known dependencies, no cycles). Every problem becomes one line
`file:line:column: field.path: what is wrong` of a single `SpecError`; nothing escapes as a
traceback. `validate_workflow` checks one mapping given on the command line.
"""

from __future__ import annotations

import codecs
import difflib
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from dstack.errors import SpecError, UsageError
from dstack.names import did_you_mean
from dstack.provider_registry import PROVIDERS, providers_hint, unknown_provider_message
from dstack.sizes import format_size
from dstack.spec import Workflow, describe, workflow_model

MAX_FILE_BYTES = 5 * 1024 * 1024
MAX_NODES = 200_000
MAX_PROBLEMS = 20
COMMAND_LINE = "<command line>"
SCHEMA_HINT = "`dstack schema` prints every field a workflow may have."
EXAMPLE_HINT = "For example:\nworkflows:\n  - name: train\n    provider: python\n    file: train.py"
_MERGE = "tag:yaml.org,2002:merge"
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

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


def spec_error(problems: Sequence[Problem], hint: str | None = SCHEMA_HINT) -> SpecError:
    """One `SpecError` listing `problems`, one a line, the first one first."""
    lines = [str(problem) for problem in dict.fromkeys(problems)]
    if len(lines) > MAX_PROBLEMS:
        lines = [*lines[:MAX_PROBLEMS], f"... and {len(lines) - MAX_PROBLEMS} more problems"]
    return SpecError("\n".join(lines), hint)


def _problem(origin: str, locate: Locate | None, path: FieldPath, message: str, key: bool = False):
    position = locate(path, key) if locate else None
    return Problem(origin, path, message, *(position or (None, None)))


# -- one workflow --------------------------------------------------------------------------

_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _plain(error: Mapping[str, Any]) -> str:
    """A pydantic error in plain words."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
        name = next(k for k in bound if k in ctx)
        return f"must be {bound[name]} {ctx[name]}, got {describe(value)}"
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    return str(error["msg"])


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _fields_at(model: type[BaseModel], path: FieldPath) -> list[str]:
    """The keys allowed in the mapping at `path` inside `model`."""
    current: type[BaseModel] | None = model
    for part in path:
        if isinstance(part, int) or current is None:
            continue
        info = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
        current = _model_in(info.annotation) if info else None
    return [f.alias or n for n, f in current.model_fields.items()] if current else []


def _unknown_field(provider: str, path: FieldPath) -> tuple[str, str | None]:
    """Message for an unknown key at `path`, and the field it was probably meant to be."""
    key = str(path[-1])
    choices = _fields_at(workflow_model(provider), path[:-1])
    message = f'unknown field "{key}"'
    if len(path) == 1:
        others = [p for p in PROVIDERS if key in _fields_at(workflow_model(p), ())]
        if others:
            return f"{message} for the {provider} provider ({', '.join(others)} has it)", None
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    if close:
        return f'{message}. Did you mean "{close[0]}"?', close[0]
    if 0 < len(choices) <= 8:
        return f"{message}; expected one of: {', '.join(choices)}", None
    return message, None


def check_workflow(
    data: object,
    *,
    origin: str = COMMAND_LINE,
    path: FieldPath = (),
    locate: Locate | None = None,
) -> tuple[Workflow | None, list[Problem]]:
    """Validate one workflow mapping: the workflow, or None and every problem found."""

    def problem(sub: FieldPath, message: str, key: bool = False) -> Problem:
        return _problem(origin, locate, path + sub, message, key)

    if not isinstance(data, Mapping):
        return None, [problem((), f"expected a mapping of workflow fields, got {describe(data)}")]
    provider = data.get("provider")
    if provider is None:
        return None, [problem((), f'"provider" is required. {providers_hint()}')]
    if not isinstance(provider, str):
        return None, [problem(("provider",), f"expected a provider name, got {describe(provider)}")]
    if provider not in PROVIDERS:
        message = f"{unknown_provider_message(provider)} {providers_hint()}"
        return None, [problem(("provider",), message)]
    model = workflow_model(provider)
    try:
        return model.model_validate(dict(data)), []
    except ValidationError as e:
        errors = e.errors(include_url=False)
    problems, meant = [], set()
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message, suggestion = _unknown_field(provider, loc)
            problems.append(problem(loc, message, key=True))
            meant.add((*loc[:-1], suggestion))
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc not in meant:  # a misspelling says it already
            problems.append(problem(loc[:-1], f'"{loc[-1]}" is required'))
        elif error["type"] not in ("missing", "extra_forbidden"):
            problems.append(problem(loc, _plain(error)))
    return None, problems


def validate_workflow(data: Mapping[str, Any], *, origin: str = COMMAND_LINE) -> Workflow:
    """The workflow `data` describes (`name` may be absent); `SpecError` listing every problem."""
    workflow, problems = check_workflow(data, origin=origin)
    if problems or workflow is None:
        raise spec_error(problems)
    return workflow


# -- YAML with positions -------------------------------------------------------------------


@dataclass
class _Marks:
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

    def __init__(self, loader: Any, origin: str) -> None:
        self.loader, self.origin = loader, origin
        self.marks, self.problems, self.count = _Marks(), list[Problem](), 0
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


def parse_yaml(text: str, origin: str) -> tuple[object, _Marks]:
    """The data in `text` (None when empty) and where each key and value is."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, _Marks()
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


def read_text(path: Path, origin: str) -> str:
    """The UTF-8 text of a workflow file, refusing huge, binary and undecodable files."""
    too_big = (
        f"{origin}: the file is over {format_size(MAX_FILE_BYTES)}, the limit for a workflow file"
    )
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise SpecError(f"{origin}: not a regular file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(too_big, "Is this the right file? Workflow files are small YAML.")
        with path.open("rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise SpecError(f"{origin}: cannot read the file: {e.strerror or e}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError(too_big, "Is this the right file? Workflow files are small YAML.")
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise SpecError(f"{origin}: the file is UTF-16", "Save it as UTF-8.")
    if b"\0" in data:
        raise SpecError(f"{origin}: this is a binary file (it has NUL bytes), not YAML text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        message = f"{origin}:{line}:{column}: not valid UTF-8 (byte 0x{data[e.start]:02x})"
        raise SpecError(message, "Save the file as UTF-8.") from None


# -- files and projects --------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """Where a workflow is defined: its file, shown as `origin`, and the line of its entry."""

    path: Path
    origin: str
    line: int
    index: int

    def __str__(self) -> str:
        return f"{self.origin}:{self.line}"


class Workflows(Mapping[str, Workflow]):
    """A project's workflows by name, in file order, with where each was defined."""

    def __init__(
        self,
        workflows: Mapping[str, Workflow] | None = None,
        locations: Mapping[str, Location] | None = None,
        files: Sequence[Path] = (),
    ) -> None:
        self._workflows = dict(workflows or {})
        self.locations = dict(locations or {})
        self.files = list(files)

    def __getitem__(self, name: str) -> Workflow:
        return self._workflows[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._workflows)

    def __len__(self) -> int:
        return len(self._workflows)

    def location(self, name: str) -> Location:
        """Where workflow `name` is defined."""
        return self.locations[name]

    def require(self, name: str) -> Workflow:
        """Workflow `name`, or a `UsageError` with the nearest name."""
        if name in self._workflows:
            return self._workflows[name]
        message = f'unknown workflow "{name}"'
        suggestion = did_you_mean(name, self._workflows)
        known = ", ".join(self._workflows) or "none (no .dstack/workflows.yaml)"
        hint = f"Workflows: {known}. {providers_hint()}"
        raise UsageError(f"{message}. {suggestion}" if suggestion else message, hint)


def workflow_files(project_dir: Path) -> list[Path]:
    """`.dstack/workflows.yaml` (or `.yml`) then `.dstack/workflows/*.yaml` in name order."""
    root = project_dir / ".dstack"
    files = [root / name for name in ("workflows.yaml", "workflows.yml") if (root / name).exists()]
    folder = root / "workflows"
    if folder.is_dir():
        files += sorted(
            p for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.name[0] != "."
        )
    return files


def _origin(path: Path, project_dir: Path) -> str:
    try:
        return path.relative_to(project_dir).as_posix()
    except ValueError:
        return str(path)


@dataclass
class _Entry:
    workflow: Workflow
    location: Location
    locate: Locate


def _check_file(data: object, path: Path, origin: str, marks: _Marks) -> tuple[list, list]:
    """The workflows of one parsed file and the problems in it."""
    locate = marks.locate

    def problem(sub: FieldPath, message: str, key: bool = False) -> Problem:
        return _problem(origin, locate, sub, message, key)

    if data is None:
        raise SpecError(f"{origin}: the file is empty", EXAMPLE_HINT)
    if not isinstance(data, dict):
        message = f"the top level must be a mapping with a `workflows:` list, not {describe(data)}"
        return [], [problem((), message)]
    problems = []
    for key in data:
        if key != "workflows" and not key.startswith("x-"):  # x-…: room for YAML anchors
            suggestion = did_you_mean(key, ["workflows"]) or (
                'The only key is "workflows"; keys starting with "x-" are ignored.'
            )
            problems.append(problem((key,), f'unknown key "{key}". {suggestion}', key=True))
    items = data.get("workflows")
    if "workflows" not in data:
        problems.append(Problem(origin, (), '"workflows" is missing', 1, 1))
    elif not isinstance(items, list):
        message = f"expected a list of workflows, got {describe(items)}"
        problems.append(problem(("workflows",), message))
    entries = []
    for i, item in enumerate(items if isinstance(items, list) else []):
        item_path: FieldPath = ("workflows", i)
        workflow, found = check_workflow(item, origin=origin, path=item_path, locate=locate)
        if isinstance(item, Mapping) and "name" not in item:
            found.insert(0, problem(item_path, '"name" is required'))
        elif isinstance(item, Mapping) and item["name"] is None:
            found.insert(0, problem((*item_path, "name"), "expected a workflow name, got nothing"))
        problems += found
        if workflow is not None and not found:
            line = (locate(item_path, False) or (1, 1))[0]
            entries.append(_Entry(workflow, Location(path, origin, line, i), locate))
    return entries, sorted(problems, key=lambda p: p.line or 0)


def _check_together(entries: list[_Entry]) -> list[Problem]:
    """Problems between workflows: duplicate names, unknown dependencies, cycles."""
    problems: list[Problem] = []
    first: dict[str, _Entry] = {}

    def problem(entry: _Entry, sub: FieldPath, message: str) -> Problem:
        where = ("workflows", entry.location.index, *sub)
        return _problem(entry.location.origin, entry.locate, where, message)

    for entry in entries:
        name = str(entry.workflow.name)
        if name in first:
            message = f'"{name}" is defined twice: at {first[name].location} and {entry.location}'
            problems.append(problem(entry, ("name",), message))
        else:
            first[name] = entry
    graph: dict[str, list[tuple[str, int]]] = {name: [] for name in first}
    for name, entry in first.items():
        for j, dep in enumerate(entry.workflow.depends_on):
            if dep.workflow is None:
                continue
            if dep.workflow in first:
                graph[name].append((dep.workflow, j))
                continue
            message = f'"{dep}" refers to unknown workflow "{dep.workflow}"'
            suggestion = did_you_mean(dep.workflow, first) or f"Workflows: {', '.join(first)}."
            problems.append(problem(entry, ("depends-on", j), f"{message}. {suggestion}"))
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        stack.append(name)
        for target, _ in graph[name]:
            if target in stack:
                cycle = [*stack[stack.index(target) :], target]
                j = next(j for t, j in graph[cycle[0]] if t == cycle[1])
                message = f"dependency cycle: {' -> '.join(cycle)}"
                problems.append(problem(first[cycle[0]], ("depends-on", j), message))
            elif target not in done:
                visit(target, stack)
        stack.pop()
        done.add(name)

    for name in graph:
        if name not in done:
            visit(name, [])
    return problems


def load_workflows(project_dir: Path) -> Workflows:
    """Every workflow of the project at `project_dir`; empty when it has no workflow files.

    Raises one `SpecError` (exit code 2) listing every problem, each with file and line.
    """
    project_dir = Path(project_dir)
    files = workflow_files(project_dir)
    entries: list[_Entry] = []
    problems: list[Problem] = []
    for path in files:
        origin = _origin(path, project_dir)
        data, marks = parse_yaml(read_text(path, origin), origin)
        found, file_problems = _check_file(data, path, origin, marks)
        entries += found
        problems += file_problems
    if not problems:
        try:
            problems = _check_together(entries)
        except RecursionError:
            raise SpecError("the chain of `depends-on` between workflows is too long") from None
    if problems:
        raise spec_error(problems)
    return Workflows(
        {str(e.workflow.name): e.workflow for e in entries},
        {str(e.workflow.name): e.location for e in entries},
        files,
    )

"""Loading workflows: `.dstack/workflows.yaml` and `.dstack/workflows/*.yaml` of a project.

`load_workflows(project_dir)` reads every file, keeps the line of every key and value,
checks each workflow (`dstack.spec.validation.check_workflow`) and then checks them together
(unique names, known dependencies, no cycles). Every problem becomes one line
`file:line:column: field.path: what is wrong` of a single `SpecError`; nothing escapes as a
traceback. `runnable_workflows` keeps, from files with problems, the workflows that are fine
(so fixing one workflow does not stop the others). Reading the YAML with positions is
`dstack.spec.positions`'s job; `Problem` and `spec_error` are in `dstack.spec.problems`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dstack.errors import SpecError, UsageError
from dstack.names import did_you_mean
from dstack.spec.fields import describe
from dstack.spec.models import Workflow
from dstack.spec.positions import Marks, parse_yaml, read_text
from dstack.spec.problems import FieldPath, Locate, Problem, spec_error
from dstack.spec.registry import providers_hint
from dstack.spec.validation import check_workflow

MAX_FILE_BYTES = 5 * 1024 * 1024
EXAMPLE_HINT = "For example:\nworkflows:\n  - name: train\n    provider: python\n    file: train.py"


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
        locates: Mapping[str, Locate] | None = None,
    ) -> None:
        self._workflows = dict(workflows or {})
        self.locations = dict(locations or {})
        self.files = list(files)
        self._locates = dict(locates or {})

    def __getitem__(self, name: str) -> Workflow:
        return self._workflows[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._workflows)

    def __len__(self) -> int:
        return len(self._workflows)

    def location(self, name: str) -> Location:
        """Where workflow `name` is defined."""
        return self.locations[name]

    def problem(self, name: str, field: str, message: str) -> Problem:
        """A problem with `field` of workflow `name`, at the field's line in its file."""
        location = self.locations[name]
        path: FieldPath = ("workflows", location.index, field)
        locate = self._locates.get(name)
        position = (locate(path, False) if locate else None) or (location.line, 1)
        return Problem(location.origin, path, message, *position)

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
    files = [root / name for name in ("workflows.yaml", "workflows.yml")
             if (root / name).exists() or (root / name).is_symlink()]  # a broken link: say so
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


def _check_file(
    data: object, path: Path, origin: str, marks: Marks
) -> tuple[list[_Entry], list[Problem]]:
    """The workflows of one parsed file and the problems in it."""
    locate = marks.locate

    def problem(sub: FieldPath, message: str, key: bool = False) -> Problem:
        return Problem.at(origin, locate, sub, message, key)

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
        workflow, found = check_workflow(item, origin=origin, path=item_path, locate=locate,
                                         units_required=True)
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
        return Problem.at(entry.location.origin, entry.locate, where, message)

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
        _data, found, file_problems = _read_file(path, project_dir)
        entries += found
        problems += file_problems
    if not problems:
        try:
            problems = _check_together(entries)
        except RecursionError:
            raise SpecError("the chain of `depends-on` between workflows is too long") from None
    if problems:
        raise spec_error(problems)
    return _workflows(entries, files)


def _read_file(path: Path, project_dir: Path) -> tuple[object, list[_Entry], list[Problem]]:
    """One workflow file: its parsed data, its workflows and its problems (a `SpecError`
    when it cannot be read as YAML at all)."""
    origin = _origin(path, project_dir)
    data, marks = parse_yaml(read_text(path, origin, MAX_FILE_BYTES), origin)
    found, problems = _check_file(data, path, origin, marks)
    return data, found, problems


def _workflows(entries: list[_Entry], files: Sequence[Path]) -> Workflows:
    return Workflows({str(e.workflow.name): e.workflow for e in entries},
                     {str(e.workflow.name): e.location for e in entries}, files,
                     {str(e.workflow.name): e.locate for e in entries})


def runnable_workflows(project_dir: Path) -> tuple[Workflows, frozenset[str] | None]:
    """For a project whose files have problems: the workflows that are valid, defined once
    and whose dependencies are (transitively) too, in files without a problem outside their
    workflows (such as an unknown top-level key); and every name the files give a workflow
    (None when a file cannot be read as workflows at all: it may define any name)."""
    project_dir = Path(project_dir)
    files = workflow_files(project_dir)
    entries: list[_Entry] = []
    names: list[str] = []
    for path in files:
        try:
            data, found, problems = _read_file(path, project_dir)
        except SpecError:
            return Workflows(files=files), None
        if any(len(p.path) < 2 or p.path[0] != "workflows" for p in problems):
            found = []  # a problem of the file itself (a top-level key): none of it runs
        items = data.get("workflows") if isinstance(data, dict) else None
        names += [str(item["name"]) for item in items if isinstance(item, Mapping)
                  and item.get("name") is not None] if isinstance(items, list) else []
        entries += found
    once = {name for name, count in Counter(names).items() if count == 1}
    entries = [e for e in entries if str(e.workflow.name) in once]
    try:  # each round drops the workflows a problem is about; their dependents go next
        while problems := _check_together(entries):
            bad = {(p.origin, p.path[1]) for p in problems}  # at ("workflows", index, ...)
            kept = [e for e in entries if (e.location.origin, e.location.index) not in bad]
            entries = kept if len(kept) < len(entries) else []  # never loop forever
    except RecursionError:
        return Workflows(files=files), frozenset(names)
    return _workflows(entries, files), frozenset(names)

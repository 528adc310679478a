"""Files a workflow names (`file`, `target`, `requirements`), checked before anything is created.

A provider's `named_files()` lists the fields of its workflow that name a file the job opens
from its working dir. Such a path must be in the run's code (`CodeFiles`: what packaging
takes) unless the job can get it another way: from a dependency's artifacts, fetched into the
code before the job starts (a run knows its dependencies' artifact files; `dstack validate`
only the folders the workflow files declare), or from the workflow's `setup` lines, which run
before the job (but after a requirements file is installed). An interpreter option (`-m`), an
absolute path and a path leading outside the project are not checked. `missing_files` finds
the rest; `check_workflow_files` reports them for `dstack validate`, `check_run_files` for
`dstack run`.
"""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dstack.errors import DstackError, UsageError
from dstack.names import closest
from dstack.spec.problems import spec_error

if TYPE_CHECKING:  # providers import this module: it stays light
    from dstack.code.packaging import CodeInventory
    from dstack.spec.loader import Workflows
    from dstack.spec.models import Workflow


def files_hint(project_dir: Path) -> str:
    """What to do about a missing file, and where paths start."""
    return (f"A path is relative to the project folder ({project_dir}), or to the working dir "
            "(`working_dir`, `--working-dir`). A run's code is what git tracks or does not "
            "ignore (without git: what .gitignore does not list), minus what .dstackignore "
            "lists: create the file, commit it or fix the path.")


@dataclass(frozen=True)
class NamedFile:
    """A workflow field naming a file the job opens, relative to its working dir."""

    field: str
    value: str
    before_setup: bool = False
    """Needed before the workflow's `setup` lines run, which therefore cannot make it."""


@dataclass(frozen=True)
class MissingFile:
    """A file a workflow names that its run would not have."""

    field: str
    value: str
    path: str
    """Relative to the project folder."""
    working_dir: str | None
    on_disk: bool
    """In the project folder, but left out of the run's code."""
    suggestion: str | None
    """A file of the code close to it, as the field would name it."""
    has_deps: bool = False
    """The workflow has dependencies (whose artifacts do not hold it either)."""

    def describe(self) -> str:
        """What is wrong, and the close file when there is one."""
        where = f'working_dir "{self.working_dir}"' if self.working_dir else "the project folder"
        if self.on_disk:
            text = (f'"{self.value}" is in {where} but not in the run\'s code (git or '
                    ".dstackignore ignores it, or dstack never packages it)")
        else:
            text = f'"{self.value}" does not exist in {where}'
        if self.has_deps:
            text += " nor among the artifacts of its dependencies"
        return f'{text}. Did you mean "{self.suggestion}"?' if self.suggestion else text


def _parents(path: str) -> Iterable[str]:
    """`a/b/c` → `a`, `a/b`."""
    parts = path.split("/")
    return ("/".join(parts[:i]) for i in range(1, len(parts)))


class CodeFiles:
    """The paths of a run's code, relative to the project folder, and the folders holding
    them."""

    def __init__(self, files: Iterable[str], links: Iterable[str] = ()) -> None:
        self.files = set(files)
        self.links = set(links)
        self.folders = {parent for path in self.files for parent in _parents(path)}

    @classmethod
    def of(cls, inventory: CodeInventory) -> CodeFiles:
        """The paths packaging `inventory` takes."""
        return cls((e.path for e in inventory.entries),
                   (e.path for e in inventory.entries if e.link is not None))

    def has(self, path: str) -> bool:
        """Whether `path` is a file or folder of the code, or lies under a symbolic link (what
        a link leads to is not looked into)."""
        return (path in self.files or path in self.folders
                or any(parent in self.links for parent in _parents(path)))

    def near(self, path: str, within: str | None = None) -> str | None:
        """The file most like `path`, inside folder `within` (None: anywhere): the same name
        in the least deep other folder, else in its own folder one whose name is close (with
        the same extension, one whose stem is)."""
        files = [f for f in self.files if within is None or f.startswith(f"{within}/")]
        folder, name = posixpath.split(path)
        same = [f for f in files if posixpath.basename(f) == name]
        if same:
            return min(same, key=lambda f: (f.count("/"), f))
        stem, ext = posixpath.splitext(name)
        here = [posixpath.basename(f) for f in files if posixpath.dirname(f) == folder]
        stems = {posixpath.splitext(n)[0]: n for n in here if ext and n.endswith(ext)}
        close_stem = closest(stem, stems, cutoff=0.7)  # a short stem matches by chance
        found = stems[close_stem] if close_stem is not None else \
            closest(name, [n for n in here if n not in stems.values()])
        return posixpath.join(folder, found) if found is not None else None


def _in_project(working_dir: str | None, value: str) -> str | None:
    """`value` relative to the project folder, or None when it is not a path inside it."""
    if value.startswith(("-", "/", "~")):
        return None
    path = posixpath.normpath(posixpath.join(working_dir or ".", value))
    if path in (".", "..") or path.startswith("../"):
        return None
    return path


def declared(artifacts: Sequence[str]) -> Callable[[str], bool]:
    """Whether artifact folders or files (relative to the project folder) may bring a path:
    it is one of them, inside one, or a folder holding one."""
    def brings(path: str) -> bool:
        return any(a in (".", path) or path.startswith(f"{a}/") or a.startswith(f"{path}/")
                   for a in artifacts)

    return brings


def _as_named(path: str, working_dir: str | None) -> str | None:
    """A project path as a field relative to `working_dir` names it (None: outside it)."""
    if not working_dir:
        return path
    return path[len(working_dir) + 1:] if path.startswith(f"{working_dir}/") else None


def named_files(workflow: Workflow) -> list[NamedFile]:
    """The files a validated workflow's provider says it names (none for a bare `Workflow`)."""
    from dstack.spec.provider import Provider  # it imports this module

    both: object = workflow  # see `dstack.spec.provider.provider_of`
    return both.named_files() if isinstance(both, Provider) else []


def missing_files(workflow: Workflow, code: CodeFiles, brought: Callable[[str], bool] | None,
                  on_disk: Callable[[str], bool]) -> list[MissingFile]:
    """The files `workflow` names that its run would not have.

    `brought` tells whether its dependencies' artifacts bring a path (relative to the project
    folder); None when that is not known (then anything may come, and nothing is missing).
    `on_disk` tells whether a path is in the project folder.
    """
    if brought is None:
        return []
    working_dir = workflow.working_dir if workflow.working_dir != "." else None
    found = []
    for item in named_files(workflow):
        if workflow.setup and not item.before_setup:
            continue
        path = _in_project(working_dir, item.value)
        if path is None or code.has(path) or brought(path):
            continue
        near = code.near(path, working_dir)
        found.append(MissingFile(item.field, item.value, path, working_dir, on_disk(path),
                                 _as_named(near, working_dir) if near else None,
                                 bool(workflow.depends_on)))
    return found


def fetched(list_keys: Callable[[str], Sequence[str]],
            prefixes: Sequence[str]) -> Callable[[str], bool]:
    """Whether the artifact files under the store `prefixes` (as the runner fetches them into
    the code) bring a path; they are listed, through `list_keys`, on the first question."""
    listed: list[CodeFiles] = []

    def brings(path: str) -> bool:
        if not listed:
            listed.append(CodeFiles(key[len(p):] for p in prefixes for key in list_keys(p)))
        return listed[0].has(path)

    return brings


def artifact_paths(workflow: Workflow) -> list[str]:
    """The artifacts of `workflow`, relative to the project folder (as its job lists them)."""
    working_dir = workflow.working_dir or "."
    return [posixpath.normpath(posixpath.join(working_dir, a.path)) for a in workflow.artifacts]


def declared_artifacts(workflows: Mapping[str, Workflow],
                       workflow: Workflow) -> list[str] | None:
    """What the dependencies of `workflow` bring, as the workflow files declare it: a
    `wf:latest` brings the artifacts of `wf`; a tagged run may be of any version, so with one
    the answer is None (not known)."""
    paths: list[str] = []
    for dep in workflow.depends_on:
        source = workflows.get(dep.workflow) if dep.workflow and dep.is_latest else None
        if source is None:
            return None
        paths += artifact_paths(source)
    return paths


def _declared_by(workflows: Mapping[str, Workflow],
                 workflow: Workflow) -> Callable[[str], bool] | None:
    paths = declared_artifacts(workflows, workflow)
    return None if paths is None else declared(paths)


def _scan(project_dir: Path) -> CodeFiles | None:
    """The code a run from `project_dir` would package (no size limit), or None when the
    folder cannot be packaged at all (`dstack run` says why)."""
    from dstack.code.packaging import scan_code

    try:
        return CodeFiles.of(scan_code(project_dir, max_bytes=sys.maxsize,
                                      max_files=sys.maxsize))
    except DstackError:
        return None


def check_workflow_files(project_dir: Path, workflows: Workflows) -> None:
    """Refuse (`SpecError`, one line per file with its workflow file and line) the files the
    project's workflows name that their runs would not have."""
    if not any(named_files(wf) for wf in workflows.values()):
        return
    code = _scan(project_dir)
    if code is None:
        return
    problems = []
    for name, wf in workflows.items():
        found = missing_files(wf, code, _declared_by(workflows, wf),
                              lambda path: (project_dir / path).exists())
        problems += [workflows.problem(name, m.field, m.describe()) for m in found]
    if problems:
        raise spec_error(problems, files_hint(project_dir))


def check_run_files(project_dir: Path, workflow: Workflow, code: CodeFiles,
                    brought: Callable[[str], bool], name: str | None,
                    set_by: Mapping[str, str], workflows: Callable[[], Workflows]) -> None:
    """Refuse a run whose `workflow` (`name`, or None for a provider run) names a file its
    `code` will not have nor its dependencies' artifacts bring (`brought`).

    The error blames what set the value: `set_by` maps a field (`working_dir` too) to the
    command line that gave it (`--requirements r.txt`, `` `dstack run python x.py` ``), which
    makes a `UsageError`; else the field's line in the workflow file (a `SpecError` listing
    every missing file, located through `workflows()`).
    """
    missing = missing_files(workflow, code, brought, lambda path: (project_dir / path).exists())
    if not missing:
        return
    first = missing[0]
    for key in (first.field, "working_dir"):
        if key in set_by:
            what = first.describe() if key == first.field else \
                f"{first.field}: {first.describe()}"
            raise UsageError(f"{set_by[key]}: {what}", files_hint(project_dir))
    if name is None:
        raise UsageError(f"{first.field}: {first.describe()}", files_hint(project_dir))
    found = workflows()
    raise spec_error([found.problem(name, m.field, m.describe()) for m in missing],
                     files_hint(project_dir))

"""`runnable_workflows`: from workflow files with problems, the workflows that can still run
(valid, defined once, their dependencies too) and every name the files define."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dstack.errors import SpecError
from dstack.spec.loader import load_workflows, runnable_workflows


def project(tmp_path: Path, text: str, **more: str) -> Path:
    """`.dstack/workflows.yaml` holding `text`, and `.dstack/workflows/NAME.yaml` for `more`."""
    (tmp_path / ".dstack" / "workflows").mkdir(parents=True)
    (tmp_path / ".dstack" / "workflows.yaml").write_text(textwrap.dedent(text).lstrip())
    for name, body in more.items():
        (tmp_path / ".dstack" / "workflows" / f"{name}.yaml").write_text(body)
    with pytest.raises(SpecError):  # every case has a problem somewhere
        load_workflows(tmp_path)
    return tmp_path


def bash(name: str, *deps: str, extra: str = "") -> str:
    lines = [f"  - name: {name}", "    provider: bash", '    commands: ["true"]']
    if deps:
        lines.append(f"    depends-on: [{', '.join(f'{d}:latest' for d in deps)}]")
    return "\n".join(lines + ([f"    {extra}"] if extra else [])) + "\n"


def test_a_broken_workflow_leaves_the_others_runnable(tmp_path: Path) -> None:
    root = project(tmp_path, "workflows:\n" + bash("ok") + bash("bad", extra="gpuz: 1")
                   + "  - provider: bash\n    commands: [x]\n")  # no name: no name taken
    workflows, names = runnable_workflows(root)
    assert list(workflows) == ["ok"] and str(workflows.location("ok")) == \
        ".dstack/workflows.yaml:2"
    assert names == {"ok", "bad"}


def test_a_name_defined_twice_runs_neither(tmp_path: Path) -> None:
    root = project(tmp_path, "workflows:\n" + bash("twice") + bash("other"),
                   more="workflows:\n" + bash("twice", extra="gpuz: 1"))
    workflows, names = runnable_workflows(root)
    assert list(workflows) == ["other"] and names == {"twice", "other"}


def test_what_depends_on_a_broken_workflow_or_a_cycle_does_not_run(tmp_path: Path) -> None:
    root = project(tmp_path, "workflows:\n" + bash("bad", extra="gpuz: 1") + bash("b", "bad")
                   + bash("a", "b") + bash("x", "y") + bash("y", "x") + bash("z", "x")
                   + bash("free") + bash("uses-free", "free"))
    workflows, names = runnable_workflows(root)
    assert list(workflows) == ["free", "uses-free"]
    assert names == {"bad", "a", "b", "x", "y", "z", "free", "uses-free"}


def test_a_file_that_is_not_workflows_leaves_nothing_runnable(tmp_path: Path) -> None:
    root = project(tmp_path, "workflows:\n" + bash("ok"), more="workflows:\n  - [\n")
    workflows, names = runnable_workflows(root)
    assert list(workflows) == [] and names is None

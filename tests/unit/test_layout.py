"""The layout README's table promises: the core's packages import one way (each only those
above it), the core never imports the Pulumi side, the providers or the CLI, and no module
of the package takes part in an import cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import dstack

CORE = Path(dstack.__file__).resolve().parent
ORDER = ["", "store", "code", "spec", "config", "catalogue", "run", "runner"]
"""The core's packages in README's order ("" is the root modules)."""
OUTSIDE = ("dstack.stacks", "dstack.providers", "dstack.cli")


def _module_name(path: Path, root: Path = CORE, prefix: str = "dstack") -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([prefix, *parts])


def _imports(path: Path) -> list[tuple[str, bool, bool]]:
    """(imported dstack module, at module level, for type checking only) of one file."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for child in node.body for n in ast.walk(child)}
    top = {id(n) for stmt in tree.body for n in ast.walk(stmt)
           if not isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)}
    out = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name == "dstack" or name.startswith("dstack."):
                out.append((name, id(node) in top, id(node) in typing_only))
    return out


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else ""


def _core_files() -> list[Path]:
    return sorted(p for p in CORE.rglob("*.py") if "__pycache__" not in p.parts)


def test_the_core_packages_import_one_way() -> None:
    wrong = []
    for path in _core_files():
        here = _module_name(path)
        for target, _top, typing_only in _imports(path):
            if target.startswith(OUTSIDE):
                wrong.append(f"{here} imports {target}")
                continue
            there = _package(target) if target.count(".") > 1 else ""
            if target.count(".") == 1 and (CORE / target.split(".")[1]).is_dir():
                there = target.split(".")[1]  # `import dstack.run` is the package
            if ORDER.index(there) > ORDER.index(_package(here)) and not typing_only:
                wrong.append(f"{here} imports {target} ({there} comes after "
                             f"{_package(here) or 'the root'})")
    assert wrong == []


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each import cycle of `graph` (module -> the modules it imports), as `a -> b -> a`."""
    cycles: list[str] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]))
            elif nxt in graph and not state.get(nxt):
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [node])
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def test_no_import_cycle_at_module_level() -> None:
    import dstack.cli
    import dstack.providers
    import dstack.stacks

    roots = [(CORE, "dstack")] + [(Path(m.__file__).resolve().parent, m.__name__)
                                  for m in (dstack.stacks, dstack.providers, dstack.cli)]
    graph: dict[str, set[str]] = {}
    for root, prefix in roots:
        for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
            graph[_module_name(path, root, prefix)] = {
                t for t, top, typing_only in _imports(path) if top and not typing_only}
    assert len(graph) > 90  # every module of the package was read
    assert find_cycles(graph) == []


def test_every_subpackage_says_what_it_holds() -> None:
    for name in ORDER[1:]:
        init = CORE / name / "__init__.py"
        assert ast.get_docstring(ast.parse(init.read_text())), f"{init} has no docstring"

"""`dstack run NAME --help`: a provider's (or a workflow's) fields, its command-line form and
the `dstack run` options. Formatting only: the fields come from the provider's pydantic
model, its form and summary from its `usage`, the options from the `run` command itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import typer
import typer.core
import typer.main
from pydantic import BaseModel

from dstack.cli import output
from dstack.errors import SpecError, UsageError
from dstack.json_types import JsonDoc
from dstack.names import did_you_mean
from dstack.run.project import find_project_dir
from dstack.spec.loader import Workflows, load_workflows
from dstack.spec.models import Workflow
from dstack.spec.provider import Provider
from dstack.spec.registry import PROVIDERS, provider_params

HELP = ("-h", "--help")
_TYPES = {"string": "text", "integer": "integer", "number": "number", "boolean": "true/false",
          "null": "null"}


def wants_run_help(argv: Sequence[str]) -> bool:
    """Whether `argv` is `dstack [--debug] run ... --help`."""
    words = [w for w in argv if not w.startswith("-")]
    return bool(words) and words[0] == "run" and any(
        w in HELP for w in argv[list(argv).index("run") + 1:])


def print_run_help(app: typer.Typer, argv: Sequence[str]) -> int:
    """Print the help `argv` asks for; without a NAME, click's help then the providers."""
    root = typer.main.get_command(app)
    assert isinstance(root, typer.core.TyperGroup)  # an app of several commands is a group
    command = root.commands["run"]
    assert isinstance(command, typer.core.TyperCommand)  # `run` is a command of its own
    name, project = _target(command, list(argv[list(argv).index("run") + 1:]))
    if name is None:
        app(args=list(argv), prog_name="dstack", standalone_mode=False)
        _print_catalogue(project)
        return 0
    from dstack.run.submit import workflows_for

    try:  # a broken workflow in the file does not hide the help of the others
        workflows: Workflows | None
        workflows, warning = workflows_for(project, name)
        if warning:
            output.say(warning)
    except SpecError:
        if name not in PROVIDERS:
            raise
        workflows = None
    if workflows is not None and name in workflows:
        _print_workflow(name, workflows[name], workflows.location(name))
    elif name in PROVIDERS:
        _print_provider(name)
    else:
        names = [*(workflows or []), *PROVIDERS]
        raise UsageError(f"{name!r} is neither a workflow of {project / '.dstack'} nor a "
                         "provider", did_you_mean(name, names) or _providers_line())
    _print_options(command)
    return 0


def _target(command: typer.core.TyperCommand, words: list[str]) -> tuple[str | None, Path]:
    """The NAME after `run` (skipping option values) and the `--project` folder (else the
    project the current folder is in)."""
    takes_value = {opt for p in _options(command) if not p.is_flag for opt in p.opts}
    name, project, i = None, find_project_dir(Path.cwd()) or Path("."), 0
    while i < len(words):
        word = words[i]
        if word.startswith("-"):
            flag, eq, value = word.partition("=")
            if flag in takes_value and not eq and i + 1 < len(words):
                value, i = words[i + 1], i + 1
            if flag in ("-C", "--project") and value:
                project = Path(value)
        elif name is None:
            name = word
        i += 1
    return name, project


def cli_form(name: str, provider: type[Provider]) -> str:
    """`dstack run NAME ...`, the command line the provider's `usage` declares."""
    return provider.usage.line(name)


def type_text(schema: JsonDoc, defs: JsonDoc) -> str:
    """A field's JSON Schema as words: `text`, `list of text`, `mapping: a, b`."""
    if "$ref" in schema:
        target = defs.get(schema["$ref"].rsplit("/", 1)[-1], {})
        return "mapping: " + ", ".join(target.get("properties", {}))
    if "anyOf" in schema:
        kinds = [type_text(s, defs) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(dict.fromkeys(kinds))
    kind = schema.get("type")
    if isinstance(kind, list):
        return " or ".join(_TYPES.get(str(k), str(k)) for k in kind if k != "null")
    if kind == "array":
        return "list of " + type_text(schema.get("items", {}), defs)
    if kind == "object":
        extra = schema.get("additionalProperties")
        return "mapping of " + type_text(extra, defs) if isinstance(extra, dict) else "mapping"
    return _TYPES.get(str(kind), "any")


def field_rows(model: type[BaseModel]) -> list[list[str]]:
    """One row a field: name, type, required or default, description."""
    schema = model.model_json_schema(by_alias=True)
    defs, props = schema.get("$defs", {}), schema.get("properties", {})
    rows = []
    for field_name, info in model.model_fields.items():
        key = info.alias or field_name
        if info.is_required():
            default = "required"
        else:
            value = info.get_default(call_default_factory=True)
            default = "default: " + json.dumps(value)
        rows.append([key, type_text(props.get(key, {}), defs), default, info.description or ""])
    return rows


def _print_provider(name: str) -> None:
    model = provider_params(name)
    print(f"Usage: {cli_form(name, model)}  [dstack run OPTIONS]\n")
    print(f"The {name} provider {model.usage.summary}.")
    print(f"Its fields (in .dstack/workflows.yaml, with `provider: {name}`):")
    output.table(["FIELD", "TYPE", "REQUIRED/DEFAULT", "DESCRIPTION"], field_rows(model))
    print("\nEvery workflow also has: " + ", ".join(
        info.alias or key for key, info in Workflow.model_fields.items()) + ".")


def _print_workflow(name: str, wf: Workflow, location: object) -> None:
    print(f"Usage: dstack run {name} [dstack run OPTIONS] [ARGS]...\n")
    print(f"Workflow {name} ({location}), run by the {wf.provider} provider."
          + (f" {wf.help}" if wf.help else ""))
    print("ARGS and options dstack does not know go to the job.\n")
    model = provider_params(wf.provider)
    values = wf.model_dump(by_alias=True, exclude_unset=True, mode="json")
    rows = [[*row, json.dumps(values[row[0]]) if row[0] in values else ""]
            for row in field_rows(model)]
    print(f"Fields of the {wf.provider} provider:")
    output.table(["FIELD", "TYPE", "REQUIRED/DEFAULT", "DESCRIPTION", "THIS WORKFLOW"], rows)


def _print_options(command: typer.core.TyperCommand) -> None:
    ctx = command.context_class(command, info_name="run")
    records = [p.get_help_record(ctx) for p in _options(command)]
    print("\nOptions of `dstack run` (before `--`; anything after `--` goes to the job):")
    output.table(["OPTION", "DESCRIPTION"], [list(r) for r in records if r])


def _print_catalogue(project: Path) -> None:
    print("\nProviders (`dstack run PROVIDER --help` shows one):")
    output.table(["PROVIDER", "COMMAND LINE"],
                 [[name, cli_form(name, provider_params(name))] for name in PROVIDERS])
    try:
        workflows = load_workflows(project)
    except SpecError as exc:
        print(f"\nWorkflows: {exc.message}")
        return
    if list(workflows):
        print(f"\nWorkflows of {project.resolve() / '.dstack'}:")
        output.table(["WORKFLOW", "PROVIDER", "HELP"],
                     [[n, workflows[n].provider, workflows[n].help or ""] for n in workflows])


def _options(command: typer.core.TyperCommand) -> list[typer.core.TyperOption]:
    """The options of a click command (typer ships its own click: its options are typer's)."""
    return [p for p in command.params if isinstance(p, typer.core.TyperOption)]


def _providers_line() -> str:
    return "Providers: " + ", ".join(PROVIDERS) + "."

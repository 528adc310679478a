"""Commands about the workflow file: schema, validate."""

from __future__ import annotations

import typer

from dstack.cli import output
from dstack.cli.options import ProjectOpt, project_folder

workflow_app = typer.Typer()
"""The workflow file's commands; the app adds them at its top level."""


@workflow_app.command()
def schema() -> None:
    """Print the JSON Schema of .dstack/workflows.yaml."""
    from dstack.spec.models import workflow_file_schema

    output.print_json(workflow_file_schema())


@workflow_app.command()
def validate(project: ProjectOpt = None) -> None:
    """Check the project's workflow files, and the files their workflows name, and list
    their workflows."""
    from dstack.spec.files import check_workflow_files
    from dstack.spec.loader import load_workflows

    folder = project_folder(project)
    workflows = load_workflows(folder)
    check_workflow_files(folder, workflows)
    for name in workflows:
        output.say(f"{name}: {workflows[name].provider} ({workflows.location(name)})")
    output.say(f"{len(list(workflows))} workflow(s), all valid")

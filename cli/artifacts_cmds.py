"""`dstack artifacts list|download`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dstack.cli import output
from dstack.cli.options import JsonOpt, Profile, open_context

artifacts_app = typer.Typer(help="List and download the artifacts of runs.", no_args_is_help=True)
Source = Annotated[str, typer.Argument(metavar="RUN|:TAG", help="A run name, or :TAG.")]


@artifacts_app.command("list")
def list_cmd(source: Source, profile: Profile = None, json_out: JsonOpt = False) -> None:
    """List the artifact files of a run or tag."""
    from dstack.run.artifacts import list_artifacts, resolve_source

    ctx = open_context(profile)
    run = resolve_source(ctx.store, source)
    files = list_artifacts(ctx.store, run.name)
    if json_out:
        output.print_json({"run": run.name, "files": [f.__dict__ for f in files]})
        return
    output.table(["PATH", "SIZE"], [[f.path, str(f.size)] for f in files])


@artifacts_app.command("download")
def download_cmd(
    source: Source,
    path: Annotated[str | None, typer.Argument(help="Only this file or folder.")] = None,
    out: Annotated[Path, typer.Option("-o", "--output", help="Folder to write to.")] = Path("."),
    profile: Profile = None,
) -> None:
    """Download the artifacts of a run or tag."""
    from dstack.run.artifacts import download, resolve_source

    ctx = open_context(profile)
    run = resolve_source(ctx.store, source)
    written = download(ctx.store, run.name, out, path)
    output.say(f"downloaded {len(written)} file(s) of {run.name} to {out}")

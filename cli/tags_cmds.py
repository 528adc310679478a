"""`dstack tags add|list|delete`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dstack.cli import output
from dstack.cli.options import JsonOpt, Profile, Yes, confirm, gc_paused, open_context

tags_app = typer.Typer(help="Name runs so that workflows and people reuse their artifacts.",
                       no_args_is_help=True)


@tags_app.command("add")
def add_cmd(
    tag: Annotated[str, typer.Argument(help="The tag.")],
    run_name: Annotated[str | None, typer.Argument(metavar="RUN", help="A finished run.")] = None,
    artifact: Annotated[list[str] | None, typer.Option(
        "--artifact", help="Upload this local file or folder under the tag (repeat).")] = None,
    profile: Profile = None,
) -> None:
    """Tag a successful run, or upload local files as a tagged set of artifacts."""
    from dstack.errors import UsageError
    from dstack.run.artifacts import upload_as_tag
    from dstack.run.project import find_project_dir, project_of
    from dstack.run.record import load_run
    from dstack.run.tags import add_tag

    ctx = open_context(profile)
    if bool(run_name) == bool(artifact):
        raise UsageError("give either RUN or --artifact PATH",
                         "`dstack tags add TAG RUN`, or `dstack tags add TAG --artifact PATH`.")
    if run_name:
        add_tag(ctx.store, tag, load_run(ctx.store, run_name))
        output.say(f"tagged {run_name} as {tag}")
    else:
        ctx.ensure_workspace(output.say)
        run = upload_as_tag(ctx.store, tag, artifact or [], Path.cwd(), ctx.profile.name,
                            ctx.profile.backend,
                            project_of(find_project_dir(Path.cwd()) or Path.cwd()))
        output.say(f"uploaded {len(artifact or [])} path(s) as {run.name}, tagged {tag}")


@tags_app.command("list")
def list_cmd(profile: Profile = None, json_out: JsonOpt = False) -> None:
    """List tags."""
    from dstack.run.tags import tag_rows

    ctx = open_context(profile)
    with gc_paused():  # tens of thousands of rows: no cycles among them
        tags = tag_rows(ctx.store, ctx.listing_cache)
        if json_out:
            output.print_json_rows(tags)
            return
        output.table(["TAG", "RUN", "WORKFLOW", "CREATED"],
                     [[t["name"], t["run"], t["workflow"] or "", t["created_at"]] for t in tags])


@tags_app.command("delete")
def delete_cmd(
    tag: Annotated[str, typer.Argument(help="The tag.")],
    yes: Yes = False,
    profile: Profile = None,
) -> None:
    """Delete a tag (the run and its artifacts stay)."""
    from dstack.run.tags import delete_tag, load_tag

    ctx = open_context(profile)
    load_tag(ctx.store, tag)
    confirm(f"Delete tag {tag}?", yes)
    delete_tag(ctx.store, tag)
    output.say(f"deleted tag {tag}")

"""`dstack artifacts list|download|share`."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from dstack.cli import output
from dstack.cli.options import JsonOpt, Profile, open_context

artifacts_app = typer.Typer(help="List, download and share the artifacts of runs.",
                            no_args_is_help=True)
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


@artifacts_app.command("share")
def share_cmd(
    source: Source,
    path: Annotated[str | None, typer.Argument(help="Only this file or folder.")] = None,
    expires: Annotated[str, typer.Option(
        "--expires", metavar="DURATION",
        help="How long the links work: 24h, 90m, 7d, 30s (at most 7d).")] = "24h",
    profile: Profile = None,
    json_out: JsonOpt = False,
) -> None:
    """Print download links to the artifact files of a run or tag, one per file.

    Anyone with a link can download that file, without credentials, until the links expire.
    They are signed with the store's credentials (S3 presigned, GCS V4 signed URLs): nothing
    is made public, and a link cannot be taken back before it expires except by deleting the
    file or the key that signed it. The local backend keeps artifacts on this machine and
    gives no links.
    """
    from dstack.run.artifacts import parse_expires, share

    expires_s = parse_expires(expires)
    ctx = open_context(profile)
    links = share(ctx.store, source, expires_s, path)
    if json_out:
        output.print_json([link.__dict__ for link in links])
        return
    width = max(len(link.path) for link in links)
    until = datetime.fromisoformat(links[0].expires_at).strftime("%Y-%m-%d %H:%M:%S UTC")
    output.lines([*(f"{link.path:<{width}}  {link.url}" for link in links),
                  f"the links expire at {until} (in {expires})"])

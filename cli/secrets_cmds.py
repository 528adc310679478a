"""`dstack secrets add|list|delete`: values jobs get as environment variables."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dstack.cli import output
from dstack.cli.options import Profile, Yes, confirm, open_context

secrets_app = typer.Typer(help="Secrets: environment variables for jobs, kept out of logs, "
                               "scripts and state.", no_args_is_help=True)


@secrets_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Variable name, e.g. WANDB_API_KEY.")],
    from_stdin: Annotated[bool, typer.Option("--from-stdin", help="Read the value from "
                                                                  "standard input (what a pipe "
                                                                  "does anyway).")] = False,
    profile: Profile = None,
) -> None:
    """Add or replace a secret: asked for without echo in a terminal, else read from stdin
    (`echo VALUE | dstack secrets add NAME`; trailing line breaks are dropped)."""
    from dstack.store.secrets import add_secret

    if from_stdin or not sys.stdin.isatty():
        value = sys.stdin.read().rstrip("\r\n")
    else:
        value = typer.prompt(f"Value of {name}", hide_input=True)
    ctx = open_context(profile)
    ctx.ensure_workspace(output.say)
    add_secret(ctx.store, name, value)
    output.say(f"secret {name} saved in profile {ctx.profile.name}")


@secrets_app.command("list")
def list_cmd(profile: Profile = None) -> None:
    """List secret names (never values)."""
    from dstack.store.secrets import list_secrets

    for name in list_secrets(open_context(profile).store):
        print(name)


@secrets_app.command("delete")
def delete(name: Annotated[str, typer.Argument(help="Variable name.")], yes: Yes = False,
           profile: Profile = None) -> None:
    """Delete a secret."""
    from dstack.store.secrets import delete_secret

    ctx = open_context(profile)
    confirm(f"Delete secret {name}?", yes)
    delete_secret(ctx.store, name)
    output.say(f"deleted secret {name}")

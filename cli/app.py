"""The `dstack` command: Typer commands that parse, call the core and render. No logic."""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer
import typer.main

from dstack.cli import output
from dstack.cli.artifacts_cmds import artifacts_app
from dstack.cli.config_cmds import config_app
from dstack.cli.cost_cmds import cost_app
from dstack.cli.mistakes import check_argv
from dstack.cli.runs_cmds import runs_app
from dstack.cli.secrets_cmds import secrets_app
from dstack.cli.tags_cmds import tags_app
from dstack.cli.workflow_cmds import workflow_app
from dstack.errors import DstackError

app = typer.Typer(
    name="dstack",
    help="Run ML workflows on this machine or on GPU instances in your own cloud. "
         "Each run is an ephemeral Pulumi stack.",
    no_args_is_help=True,
    rich_markup_mode=None,  # click's plain help: a flag shows no type (rich showed `<bool>`)
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(runs_app)  # without a name: run, ps, logs, ... are dstack's own commands
app.add_typer(workflow_app)  # schema, validate
app.add_typer(cost_app)  # cost
app.add_typer(artifacts_app, name="artifacts")
app.add_typer(tags_app, name="tags")
app.add_typer(config_app, name="config")
app.add_typer(secrets_app, name="secrets")


def _print_version(wanted: bool) -> None:
    """`dstack --version`: the installed package's version (read from its metadata)."""
    if wanted:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"dstack {version('dstack')}")
        except PackageNotFoundError:  # run from a source tree that is not installed
            from dstack import __version__

            print(f"dstack {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", "-V", is_eager=True, callback=_print_version,
        help="Print dstack's version and exit.")] = False,
) -> None:
    output.state.debug = debug


def main() -> None:
    """Console entry point: run the app, turning dstack errors into messages and exit codes."""
    os.umask(0o077)  # what dstack writes (store, state, config) is the user's alone
    argv = sys.argv[1:]
    debug = "--debug" in argv
    if "run" in argv and "--" in argv[argv.index("run"):]:
        # Everything after `--` goes to the job as it is; click would merge it with the
        # positional arguments, so it is set aside here.
        cut = argv.index("--", argv.index("run"))
        argv, output.state.after_dashes = argv[:cut], argv[cut + 1:]
    try:
        command = typer.main.get_command(app)
        check_argv(command, argv)
        run_help = False
        if "run" in argv and ("--help" in argv or "-h" in argv):  # imported only then
            from dstack.cli import provider_help  # `dstack run NAME --help`: its fields

            run_help = provider_help.wants_run_help(argv)
        if run_help:
            rv = provider_help.print_run_help(app, argv)
        else:
            # The name in usage lines is `dstack` however it was started (click would
            # say `python -m ...` under `python -m`).
            rv = command(args=argv, prog_name="dstack", standalone_mode=False)
    except DstackError as exc:
        if debug:
            traceback.print_exc()
        output.error(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        output.error("interrupted", None)
        sys.exit(130)
    except (BrokenPipeError, output.ReaderGone):
        # The reader of stdout left (`dstack ps | head`): stop quietly, as a command that
        # SIGPIPE ended does; stdout points at /dev/null so the flush at exit is quiet.
        output.stdout_to_devnull()
        sys.exit(128 + 13)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        # click's usage errors (typer carries its own copy of click, so match by shape)
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        if debug:
            raise
        output.error(f"dstack failed unexpectedly: {exc!r}",
                     "Run the command again with --debug for the traceback, and report it.")
        sys.exit(1)
    sys.exit(rv if isinstance(rv, int) else 0)

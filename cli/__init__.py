"""The Typer command line of dstack. Imported as `dstack.cli`."""

if __name__ != "dstack.cli":  # the folder is `cli/`; it installs as dstack.cli
    raise ImportError(f"import dstack.cli, not {__name__}")

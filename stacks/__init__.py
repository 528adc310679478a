"""The Pulumi side of dstack: one module per backend, and `engine`, the only module that
imports `pulumi.automation`. Imported as `dstack.stacks`."""

if __name__ != "dstack.stacks":  # the folder is `stacks/`, but it installs as dstack.stacks
    raise ImportError(f"import dstack.stacks, not {__name__}")

"""Providers: how a workflow becomes a job (commands, ports, env, setup). Imported as
`dstack.providers`."""

if __name__ != "dstack.providers":  # the folder is `providers/`; it installs as dstack.providers
    raise ImportError(f"import dstack.providers, not {__name__}")

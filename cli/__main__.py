"""`python -m dstack.cli`."""

from dstack.cli.app import main

main()

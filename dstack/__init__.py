"""dstack: run ML workflows on this machine or on GPU instances in your own cloud.

Each run is an ephemeral Pulumi stack; see DESIGN.md for the architecture. This package is
the core: it never imports pulumi, boto3, typer or rich.
"""

__version__ = "0.1.0"

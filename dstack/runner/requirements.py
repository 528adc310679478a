"""What a remote machine (an instance, a pod) installs for the runner besides the dstack wheel,
which it installs without its dependencies (`pip install --no-deps`).

The runner imports pydantic (the run record and its job) and the SDK of the one store it
opens, nothing of the Pulumi side, the providers or the CLI. The bounds are pyproject.toml's
(a unit test keeps them the same).
"""

from __future__ import annotations

from urllib.parse import urlparse

from dstack.errors import UsageError

RUNNER_REQUIREMENTS: tuple[str, ...] = ("pydantic>=2.9,<3",)
"""What the runner needs whatever its store."""

STORE_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "file": (),
    "s3": ("boto3>=1.34",),
    "gs": ("google-cloud-storage>=3.0",),
}
"""Store URL scheme → the SDK its store module imports (`dstack.store.base.STORES`)."""


def runner_requirements(store_url: str) -> tuple[str, ...]:
    """The requirements of a runner whose store is at `store_url`."""
    scheme = urlparse(store_url).scheme
    if scheme not in STORE_REQUIREMENTS:
        known = ", ".join(s + "://" for s in STORE_REQUIREMENTS)
        raise UsageError(f"no runner requirements are known for the store {store_url!r}",
                         f"Use a store of one of the schemes {known}.")
    return RUNNER_REQUIREMENTS + STORE_REQUIREMENTS[scheme]

"""The docker provider: runs a container image."""

from __future__ import annotations

from pydantic import Field

from dstack.spec import Args, Count, SpecModel


class RegistryAuth(SpecModel):
    """Credentials of a private container registry."""

    username: str = Field(min_length=1, description="Registry user name.")
    password: str = Field(min_length=1, description="Registry password or token.")


class Params(SpecModel):
    """Fields of a `provider: docker` workflow."""

    image: str = Field(min_length=1, description="Container image, e.g. `ubuntu:22.04`.")
    commands: list[str] = Field(
        default_factory=list, description="Shell commands run in the container, in order."
    )
    entrypoint: Args | None = Field(
        None,
        description="Overrides the image's entrypoint: a string (split as a shell would) "
        "or a list.",
    )
    ports: Count = Field(0, ge=0, le=64, description="How many ports the container listens on.")
    registry_auth: RegistryAuth | None = Field(
        None, description="Credentials for a private registry: {username, password}."
    )

"""The providers a workflow can name, each imported only when it is used.

The core never imports `dstack.providers` statically: `PROVIDERS` maps the provider's name
(the same string in YAML, on the command line and in code) to `"module:attribute"` of its
parameters model, a `dstack.spec.provider.Provider`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dstack.errors import UsageError
from dstack.lazy import load_class
from dstack.names import did_you_mean

if TYPE_CHECKING:
    from dstack.spec.provider import Provider

PROVIDERS: dict[str, str] = {
    "python": "dstack.providers.python:Params",
    "bash": "dstack.providers.bash:Params",
    "docker": "dstack.providers.docker:Params",
    "streamlit": "dstack.providers.apps:StreamlitParams",
    "gradio": "dstack.providers.apps:GradioParams",
    "fastapi": "dstack.providers.apps:FastapiParams",
    "lab": "dstack.providers.apps:LabParams",
    "code": "dstack.providers.apps:CodeParams",
    "notebook": "dstack.providers.apps:NotebookParams",
}


def unknown_provider_message(name: str) -> str:
    """`unknown provider "x"` with the nearest name, for the CLI and the spec loader alike."""
    suggestion = did_you_mean(name, PROVIDERS)
    message = f'unknown provider "{name}".'
    return f"{message} {suggestion}" if suggestion else message


def providers_hint() -> str:
    """The list of providers, as a hint under an error."""
    return "Providers: " + ", ".join(PROVIDERS) + "."


def provider_params(name: str) -> type[Provider]:
    """The parameters model of provider `name`; `UsageError` with "did you mean" if unknown."""
    from dstack.spec.provider import Provider  # it imports dstack.spec.models, which imports us

    target = PROVIDERS.get(name)
    if target is None:
        raise UsageError(unknown_provider_message(name), providers_hint())
    return load_class(target, Provider)  # type: ignore[type-abstract]  # issubclass only

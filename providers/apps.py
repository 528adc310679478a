"""The app providers (streamlit, gradio, fastapi, lab, code, notebook): their fields."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from dstack.spec import Args, Scalar, SpecModel, Version

_APP = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_OPTION = re.compile(r"[a-z][a-z0-9_-]*")
_RESERVED = {"host", "port", "app", "uds", "fd"}  # dstack decides where the app listens


class StreamlitParams(SpecModel):
    """Fields of a `provider: streamlit` workflow."""

    target: str = Field(min_length=1, description="The Streamlit script, e.g. `app.py`.")
    args: Args = Field(default_factory=list, description="Arguments for the script.")


class GradioParams(SpecModel):
    """Fields of a `provider: gradio` workflow."""

    file: str = Field(min_length=1, description="The Python file that launches the Gradio app.")
    args: Args = Field(default_factory=list, description="Arguments for the file.")


class FastapiParams(SpecModel):
    """Fields of a `provider: fastapi` workflow."""

    app: str = Field(description="The ASGI app as `module:attribute`, e.g. `main:app`.")
    uvicorn: dict[str, Scalar] = Field(
        default_factory=dict, description='Uvicorn options, e.g. {workers: 2, "log-level": info}.'
    )

    @field_validator("app")
    @classmethod
    def _module_attribute(cls, app: str) -> str:
        if not _APP.fullmatch(app):
            raise ValueError(f'"{app}" is not module:attribute; write e.g. "main:app"')
        return app

    @field_validator("uvicorn")
    @classmethod
    def _options(cls, options: dict[str, Scalar]) -> dict[str, Scalar]:
        for key in options:
            if not _OPTION.fullmatch(key):
                raise ValueError(f'"{key}" is not a uvicorn option name; write e.g. "workers"')
            if key in _RESERVED:
                raise ValueError(f'"{key}" is set by dstack; leave it out')
        return options


class LabParams(SpecModel):
    """Fields of a `provider: lab` workflow (JupyterLab)."""

    version: Version | None = Field(None, description='JupyterLab version, e.g. "4.2.5".')


class CodeParams(SpecModel):
    """Fields of a `provider: code` workflow (VS Code in the browser)."""

    version: Version | None = Field(None, description='code-server version, e.g. "4.93.1".')


class NotebookParams(SpecModel):
    """Fields of a `provider: notebook` workflow (Jupyter Notebook)."""

    version: Version | None = Field(None, description='Notebook version, e.g. "7.2.2".')

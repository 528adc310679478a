"""The app providers (streamlit, gradio, fastapi, lab, code, notebook).

Each is a data entry (`App`) plus its command line over the shared renderer in
`dstack.providers.rendering`: the runner gives the app a free port, waits until it answers,
then records its URL.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from dstack.job import JobParts
from dstack.providers.rendering import (
    HOST,
    PASSED,
    PORT,
    App,
    Raw,
    Word,
    app_job,
    first_positional,
)
from dstack.spec import Args, Scalar, SpecModel, Version

STREAMLIT = App("streamlit", "streamlit", ready_path="/_stcore/health")
GRADIO = App("gradio", "gradio")
FASTAPI = App("fastapi", "uvicorn")
LAB = App("lab", "jupyterlab", ready_path="/api", url_path="/lab?token={token}", token=True)
NOTEBOOK = App("notebook", "notebook", ready_path="/api", url_path="/tree?token={token}",
               token=True)
_JUPYTER = ["--no-browser", "--ip", HOST, "--port", PORT, "--allow-root",
            Raw('--IdentityProvider.token="$DSTACK_TOKEN"'), "--ServerApp.root_dir=."]

_APP = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_OPTION = re.compile(r"[a-z][a-z0-9_-]*")
_RESERVED = {"host", "port", "app", "uds", "fd"}  # dstack decides where the app listens


class StreamlitParams(SpecModel):
    """Fields of a `provider: streamlit` workflow."""

    target: str = Field(min_length=1, description="The Streamlit script, e.g. `app.py`.")
    args: Args = Field(default_factory=list, description="Arguments for the script.")

    from_cli = staticmethod(first_positional("streamlit", "target", "app.py [ARGS]..."))

    def job_parts(self) -> JobParts:
        """`streamlit run TARGET` on the run's port, headless, its args after `--`."""
        return app_job(STREAMLIT, [
            "python", "-m", "streamlit", "run", self.target, "--server.port", PORT,
            "--server.address", HOST, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--", *self.args, PASSED])


class GradioParams(SpecModel):
    """Fields of a `provider: gradio` workflow."""

    file: str = Field(min_length=1, description="The Python file that launches the Gradio app.")
    args: Args = Field(default_factory=list, description="Arguments for the file.")

    from_cli = staticmethod(first_positional("gradio", "file", "app.py [ARGS]..."))

    def job_parts(self) -> JobParts:
        """The file, with Gradio told the port and address through its environment."""
        return app_job(GRADIO, ["python", self.file, *self.args, PASSED], exports=[
            'export GRADIO_SERVER_PORT="$PORT_0" GRADIO_SERVER_NAME="$DSTACK_HOST"',
            "export GRADIO_ANALYTICS_ENABLED=False"])


class FastapiParams(SpecModel):
    """Fields of a `provider: fastapi` workflow."""

    app: str = Field(description="The ASGI app as `module:attribute`, e.g. `main:app`.")
    from_cli = staticmethod(first_positional("fastapi", "app", "main:app"))
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

    def job_parts(self) -> JobParts:
        """uvicorn serving APP on the run's port, with the workflow's uvicorn options."""
        options: list[Word] = []
        for key, value in self.uvicorn.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                options.append(flag)
            elif value is not False and value is not None:
                options += [flag, str(value)]
        job = app_job(FASTAPI, ["python", "-m", "uvicorn", self.app, "--host", HOST,
                                "--port", PORT, *options, PASSED])
        job.packages.append("fastapi")
        return job


class LabParams(SpecModel):
    """Fields of a `provider: lab` workflow (JupyterLab)."""

    version: Version | None = Field(None, description='JupyterLab version, e.g. "4.2.5".')

    from_cli = staticmethod(first_positional("lab", None, ""))

    def job_parts(self) -> JobParts:
        """JupyterLab on the run's port, behind a generated token."""
        return app_job(LAB, ["python", "-m", "jupyterlab", *_JUPYTER, PASSED],
                       version=self.version)


class CodeParams(SpecModel):
    """Fields of a `provider: code` workflow (VS Code in the browser)."""

    version: Version | None = Field(None, description='code-server version, e.g. "4.93.1".')


class NotebookParams(SpecModel):
    """Fields of a `provider: notebook` workflow (Jupyter Notebook)."""

    version: Version | None = Field(None, description='Notebook version, e.g. "7.2.2".')

    from_cli = staticmethod(first_positional("notebook", None, ""))

    def job_parts(self) -> JobParts:
        """The Jupyter Notebook app on the run's port, behind a generated token."""
        return app_job(NOTEBOOK, ["python", "-m", "notebook", *_JUPYTER, PASSED],
                       version=self.version)

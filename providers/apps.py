"""The app providers (streamlit, gradio, fastapi, lab, code, notebook).

Each is a data entry (`App`) plus its command line over the shared renderer in
`dstack.providers.rendering`: the runner gives the app a free port, waits until it answers,
then records its URL. The Jupyter servers (lab, notebook) differ only in their data: they are
rows of `JUPYTER`, each made a provider by `jupyter_provider`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import ClassVar

from pydantic import Field, create_model, field_validator

from dstack.providers.rendering import (
    HOST,
    PASSED,
    PORT,
    TOKEN,
    App,
    Raw,
    Word,
    app_job,
    first_positional,
    shell_line,
)
from dstack.spec.fields import Args, Scalar, Version
from dstack.spec.files import NamedFile
from dstack.spec.models import Workflow
from dstack.spec.provider import AppPort, JobParts, Provider, Usage

STREAMLIT = App("streamlit", "streamlit", ready_path="/_stcore/health")
GRADIO = App("gradio", "gradio")
FASTAPI = App("fastapi", "uvicorn")
_JUPYTER = ["--no-browser", "--ip", HOST, "--port", PORT, "--allow-root",
            Raw('--IdentityProvider.token="$DSTACK_TOKEN"'), "--ServerApp.root_dir=."]

_APP = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_OPTION = re.compile(r"[a-z][a-z0-9_-]*")
_RESERVED = {"host", "port", "app", "uds", "fd"}  # dstack decides where the app listens


class StreamlitParams(Provider):
    """Fields of a `provider: streamlit` workflow."""

    usage = Usage("serves a Streamlit script", "app.py [ARGS]...")
    target: str = Field(min_length=1, description="The Streamlit script, e.g. `app.py`.")
    args: Args = Field(default_factory=list, description="Arguments for the script.")

    @classmethod
    def from_cli(cls, positional: list[str]) -> tuple[dict[str, object], list[str]]:
        """The script is the first argument; the rest go to it."""
        return first_positional("streamlit", cls.usage, "target", positional)

    def named_files(self) -> list[NamedFile]:
        """The script, unless it is a URL (Streamlit runs a script it downloads)."""
        return [] if "://" in self.target else [NamedFile("target", self.target)]

    def job_parts(self, common: Workflow) -> JobParts:
        """`streamlit run TARGET` on the run's port, headless, its args after `--`."""
        return app_job(STREAMLIT, [
            "python", "-m", "streamlit", "run", self.target, "--server.port", PORT,
            "--server.address", HOST, "--server.headless", "true",
            "--browser.gatherUsageStats", "false", "--", *self.args, PASSED])


class GradioParams(Provider):
    """Fields of a `provider: gradio` workflow."""

    usage = Usage("serves the Gradio app a Python file launches", "app.py [ARGS]...")
    file: str = Field(min_length=1, description="The Python file that launches the Gradio app.")
    args: Args = Field(default_factory=list, description="Arguments for the file.")

    @classmethod
    def from_cli(cls, positional: list[str]) -> tuple[dict[str, object], list[str]]:
        """The file is the first argument; the rest go to it."""
        return first_positional("gradio", cls.usage, "file", positional)

    def named_files(self) -> list[NamedFile]:
        """The file that launches the app."""
        return [NamedFile("file", self.file)]

    def job_parts(self, common: Workflow) -> JobParts:
        """The file, with Gradio told the port and address through its environment."""
        return app_job(GRADIO, ["python", self.file, *self.args, PASSED], exports=[
            'export GRADIO_SERVER_PORT="$PORT_0" GRADIO_SERVER_NAME="$DSTACK_HOST"',
            "export GRADIO_ANALYTICS_ENABLED=False"])


class FastapiParams(Provider):
    """Fields of a `provider: fastapi` workflow."""

    usage = Usage("serves an ASGI app (e.g. FastAPI) with uvicorn", "main:app")
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

    @classmethod
    def from_cli(cls, positional: list[str]) -> tuple[dict[str, object], list[str]]:
        """The app is the first argument; the rest go to uvicorn."""
        return first_positional("fastapi", cls.usage, "app", positional)

    def job_parts(self, common: Workflow) -> JobParts:
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


@dataclass(frozen=True)
class Jupyter:
    """A Jupyter server provider, one row of `JUPYTER`: `python -m PACKAGE` of its app."""

    app: App
    title: str
    """What the provider runs, e.g. "JupyterLab"."""
    version_help: str
    """The description of its `version` field."""


JUPYTER = {row.app.name: row for row in [
    Jupyter(App("lab", "jupyterlab", ready_path="/api", url_path="/lab?token={token}",
                token=True), "JupyterLab", 'JupyterLab version, e.g. "4.2.5".'),
    Jupyter(App("notebook", "notebook", ready_path="/api", url_path="/tree?token={token}",
                token=True), "Jupyter Notebook", 'Notebook version, e.g. "7.2.2".'),
]}


class JupyterParams(Provider):
    """Fields of a Jupyter server's workflow; `jupyter_provider` subclasses it for each row of
    `JUPYTER`."""

    jupyter: ClassVar[Jupyter]
    version: Version | None = None

    def job_parts(self, common: Workflow) -> JobParts:
        """The server on the run's port, behind a generated token."""
        app = self.jupyter.app
        return app_job(app, ["python", "-m", app.package, *_JUPYTER, PASSED],
                       version=self.version)


def jupyter_provider(row: Jupyter) -> type[JupyterParams]:
    """The provider of a row of `JUPYTER`: its `version` field described for its server."""
    name = row.app.name
    model = create_model(
        f"{name.capitalize()}Params", __base__=JupyterParams, __module__=__name__,
        __doc__=f"Fields of a `provider: {name}` workflow ({row.title}).",
        version=(Version | None, Field(None, description=row.version_help)))
    model.jupyter = row
    model.usage = Usage(f"serves {row.title}, behind a generated token")
    return model


LabParams = jupyter_provider(JUPYTER["lab"])
NotebookParams = jupyter_provider(JUPYTER["notebook"])


# The code provider: openvscode-server (VS Code in the browser) from PATH or from the cache,
# where a setup step downloads the release tarball on first use; else `code-server` on PATH
# (e.g. installed from npm); else the download: one attempt that gives up on a connection
# that does not open or stalls, then says how to install a server (a machine offline).
OPENVSCODE_VERSION = "1.109.5"
OPENVSCODE_SHA256 = {  # of the release tarballs of OPENVSCODE_VERSION
    "x64": "b433bf4f0227321a7014d8460d10a8f958adc0f45aa79bd889e84e65e8f88363",
    "arm64": "36d9c14036489b63de84ebace837fcacf7e60e669a0dc715802c5443684ea4dc",
}
OPENVSCODE_RELEASES = "https://github.com/gitpod-io/openvscode-server/releases/download"
CODE_APP = AppPort(name="code", index=0, url_path="/?tkn={token}", ready_path="/")
_TARBALL = Raw('"$dstack_tmp/server.tar.gz"')
_URL = Raw('"$dstack_url"')
NO_SERVER = ("dstack: the code provider needs openvscode-server or code-server on PATH, or "
             "internet access to download openvscode-server once. Get one: put bin/ of a "
             f"release from {OPENVSCODE_RELEASES.rsplit('/', 1)[0]} on PATH, or "
             "`npm install -g code-server` (https://coder.com/docs/code-server/install)")
_OPENVSCODE = [Raw('"$dstack_code"'), "--host", HOST, "--port", PORT,
               "--connection-token", TOKEN, "--accept-server-license-terms",
               "--telemetry-level", "off", "--default-folder", "."]
_CODE_SERVER = ["code-server", "--bind-addr", Raw('"$DSTACK_HOST:$PORT_0"'), "--auth",
                "password", "--disable-telemetry", "--disable-update-check", "."]


class CodeParams(Provider):
    """Fields of a `provider: code` workflow (VS Code in the browser)."""

    usage = Usage("serves VS Code in the browser (openvscode-server or code-server), behind "
                  "a generated token")

    version: Version | None = Field(
        None, description=f'openvscode-server version, e.g. "{OPENVSCODE_VERSION}" (the default).'
    )

    def job_parts(self, common: Workflow) -> JobParts:
        """The server on the run's port behind the run's token; no Python package."""
        return JobParts(setup=self.install_lines(), shell=self.start_lines(), ports=1,
                        apps=[CODE_APP], token=True)

    def install_lines(self) -> list[str]:
        """Set `$dstack_code` to the server, downloading openvscode-server into the cache
        when neither it nor code-server is there. The tarball of the default version is
        checked against its SHA-256."""
        version = self.version or OPENVSCODE_VERSION
        sums = OPENVSCODE_SHA256 if version == OPENVSCODE_VERSION else {}
        return [
            "dstack_name=" + shlex.quote(f"openvscode-server-v{version}"),
            'dstack_dir="${DSTACK_CACHE:-$HOME/.dstack/cache}/$dstack_name"',
            "if command -v openvscode-server >/dev/null 2>&1; then",
            "  dstack_code=openvscode-server",
            'elif [ -x "$dstack_dir/bin/openvscode-server" ]; then',
            '  dstack_code="$dstack_dir/bin/openvscode-server"',
            "elif command -v code-server >/dev/null 2>&1; then",
            "  dstack_code=code-server",
            "else",
            '  case "$(uname -m)" in',
            f"    x86_64|amd64) dstack_arch=x64 dstack_sum={sums.get('x64', '')} ;;",
            f"    aarch64|arm64) dstack_arch=arm64 dstack_sum={sums.get('arm64', '')} ;;",
            '    *) echo "dstack: openvscode-server has no build for $(uname -m)" >&2; exit 1 ;;',
            "  esac",
            f'  dstack_url="{OPENVSCODE_RELEASES}/$dstack_name/$dstack_name-linux-$dstack_arch'
            '.tar.gz"',
            '  mkdir -p "$(dirname "$dstack_dir")"',
            '  dstack_tmp="$(mktemp -d "$dstack_dir.XXXXXX")"',
            "  trap 'rm -rf \"$dstack_tmp\"' EXIT",
            '  echo "dstack: downloading $dstack_url"',
            "  dstack_got=no",
            "  if command -v curl >/dev/null 2>&1; then",
            "    " + shell_line("curl", "-fsSL", "--connect-timeout", "20", "--speed-limit",
                                "1024", "--speed-time", "60", "-o", _TARBALL, _URL)
            + " && dstack_got=yes",
            "  elif command -v wget >/dev/null 2>&1; then",
            "    " + shell_line("wget", "-q", "--tries=1", "--timeout=60", "-O", _TARBALL, _URL)
            + " && dstack_got=yes",
            "  fi",
            '  if [ "$dstack_got" != yes ]; then',
            "    " + shell_line("echo", NO_SERVER) + " >&2",
            "    exit 1",
            "  fi",
            '  if [ -n "$dstack_sum" ]; then',
            '    echo "$dstack_sum  $dstack_tmp/server.tar.gz" | sha256sum -c --quiet -',
            "  fi",
            '  tar -xzf "$dstack_tmp/server.tar.gz" -C "$dstack_tmp" --strip-components 1',
            '  rm "$dstack_tmp/server.tar.gz"',
            '  mv -T "$dstack_tmp" "$dstack_dir" 2>/dev/null || rm -rf "$dstack_tmp"',
            "  trap - EXIT",
            '  dstack_code="$dstack_dir/bin/openvscode-server"',
            "fi",
        ]

    @staticmethod
    def start_lines() -> list[str]:
        """Start the server found: the token is openvscode-server's connection token (the
        app URL carries it as `?tkn=`), or code-server's password."""
        return [
            'if [ "$dstack_code" = code-server ]; then',
            '  PASSWORD="$DSTACK_TOKEN" ' + shell_line("exec", *_CODE_SERVER, PASSED),
            "fi",
            shell_line("exec", *_OPENVSCODE, PASSED),
        ]


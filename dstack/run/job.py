"""The job: what a provider turns a workflow into and what the runner executes.

A job is data, the same on every backend. The runner renders it into `job.sh` (see
`dstack.runner.jobscript`): the `setup` lines and `shell` lines are commands the user wrote; `argv`
is executed as given, each element one argument, never re-parsed by a shell.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ArtifactPath(BaseModel):
    """A folder or file of the working dir that is saved to the store."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    path: str = Field(description="Path relative to the job's working dir.")
    mount: bool = Field(False, description="Synced continuously (every artifact is).")


class AppPort(BaseModel):
    """A port the job serves an app on; the runner assigns it and waits until it answers."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    name: str = Field(description="What the app is (streamlit, lab, ...).")
    index: int = Field(0, description="Which of the job's ports (PORT_<index>).")
    url_path: str = Field("/", description="Path and query appended to the app's base URL.")
    ready_path: str = Field("/", description="Path polled until it answers.")


class Job(BaseModel):
    """Everything the runner needs to execute one run's job."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    provider: str
    setup: list[str] = Field(default_factory=list, description="Shell lines run first.")
    shell: list[str] = Field(default_factory=list, description="Shell lines the user wrote.")
    argv: list[str] = Field(default_factory=list, description="A command run without a shell.")
    args: list[str] = Field(default_factory=list,
                            description="Arguments passed through from the command line: "
                                        "appended to argv, and $@ of the shell lines.")
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: list[str] = Field(default_factory=list,
                                  description="Names of variables whose values are secret.")
    stored_env: list[str] = Field(
        default_factory=list,
        description="Names of variables from `--env-file`: their values are in the store "
                    "(`dstack.store.secrets.run_env_key`), never in `env` or the run's record.")
    working_dir: str = Field(".", description="Relative to the unpacked code.")
    artifacts: list[ArtifactPath] = Field(default_factory=list)
    requirements: str | None = Field(None, description="Requirements file to install first.")
    packages: list[str] = Field(default_factory=list,
                                description="Packages the provider needs (e.g. streamlit).")
    ports: int = Field(0, description="How many free ports the job gets (PORT_0, ...).")
    apps: list[AppPort] = Field(default_factory=list)
    token: str | None = Field(None, description="Access token of an IDE-like app.")
    resources: dict[str, object] = Field(default_factory=dict)
    needs_docker: bool = False
    needs_secrets: list[str] = Field(default_factory=list,
                                     description="Profile secrets the job cannot run without.")

    def redacted(self) -> dict[str, object]:
        """The job as JSON, with the values of secret variables hidden (and those of
        `stored_env`, which it does not hold, shown as hidden)."""
        doc = self.model_dump(mode="json")
        doc["env"] = {k: ("***" if k in self.secret_env else v) for k, v in self.env.items()}
        doc["env"].update(dict.fromkeys(self.stored_env, "***"))
        return doc


class JobParts(BaseModel):
    """What a provider contributes to a job: its command, ports and apps."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    setup: list[str] = Field(default_factory=list)
    shell: list[str] = Field(default_factory=list)
    argv: list[str] = Field(default_factory=list)
    ports: int = 0
    apps: list[AppPort] = Field(default_factory=list)
    requirements: str | None = None
    packages: list[str] = Field(default_factory=list)
    token: bool = Field(False, description="Whether the app needs a generated access token.")
    needs_docker: bool = False
    secret_env: dict[str, str] = Field(
        default_factory=dict,
        description="Variables the job's own lines read but never show, e.g. a registry "
                    "password: merged into the job's env and listed in `Job.secret_env`.")
    needs_secrets: list[str] = Field(
        default_factory=list,
        description="Profile secrets the job's own lines read (every secret is in the job's "
                    "environment): a run is refused when one is missing.")

"""What a provider contributes to a job: its command, ports and apps (`JobParts`).

`dstack.spec.provider.Provider.job_parts` returns it; `dstack.run.submit.make_job` merges it
into the run's `Job` (`dstack.run.job`), whose apps are `AppPort`s too. Only pydantic: the
runner imports this module through `dstack.run.job`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class AppPort(BaseModel):
    """A port the job serves an app on; the runner assigns it and waits until it answers."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    name: str = Field(description="What the app is (streamlit, lab, ...).")
    index: int = Field(0, description="Which of the job's ports (PORT_<index>).")
    url_path: str = Field("/", description="Path and query appended to the app's base URL.")
    ready_path: str = Field("/", description="Path polled until it answers.")


class JobParts(BaseModel):
    """What a provider contributes to a job (`dstack.run.job.Job`): its command, ports, apps."""

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

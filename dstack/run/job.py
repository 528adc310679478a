"""The job: what a provider turns a workflow into and what the runner executes.

A job is data, the same on every backend. The runner renders it into `job.sh` (see
`dstack.runner.jobscript`): the `setup` lines and `shell` lines are commands the user wrote; `argv`
is executed as given, each element one argument, never re-parsed by a shell.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from dstack.spec.job_parts import AppPort


class ArtifactPath(BaseModel):
    """A folder or file of the working dir that is saved to the store."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    path: str = Field(description="Path relative to the job's working dir.")
    mount: bool = Field(False, exclude=True, description="Read from records that have it, "
                        "never written: every artifact is synced continuously.")


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
                    "(`dstack.store.keys.run_env_key`), never in `env` or the run's record.")
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

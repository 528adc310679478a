"""The bash provider: runs shell commands."""

from __future__ import annotations

from pydantic import Field

from dstack.errors import UsageError
from dstack.spec.fields import Count
from dstack.spec.models import Workflow
from dstack.spec.provider import AppPort, JobParts, Provider, Usage


class Params(Provider):
    """Fields of a `provider: bash` workflow."""

    usage = Usage("runs shell commands, one argument a line", "COMMAND...")

    commands: list[str] = Field(min_length=1, description="Shell commands, run in order.")
    ports: Count = Field(0, ge=0, le=64, description="How many ports the commands listen on.")

    @classmethod
    def from_cli(cls, positional: list[str]) -> tuple[dict[str, object], list[str]]:
        """`dstack run bash COMMAND...`: each argument is one command line."""
        if not positional:
            raise UsageError("`dstack run bash` needs a command",
                             "Write it as `dstack run bash 'echo hi'` (one argument a line).")
        return {"commands": positional}, []

    def job_parts(self, common: Workflow) -> JobParts:
        """The user's commands, in order, with PORT_0... when it serves ports."""
        apps = [AppPort(name=f"port {i}", index=i) for i in range(self.ports)]
        return JobParts(shell=list(self.commands), ports=self.ports, apps=apps)

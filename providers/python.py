"""The python provider: runs a Python file with arguments."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from dstack.errors import UsageError
from dstack.spec.fields import Args, Version, relative_path
from dstack.spec.files import NamedFile
from dstack.spec.models import Workflow
from dstack.spec.provider import JobParts, Provider, Usage


class Params(Provider):
    """Fields of a `provider: python` workflow."""

    usage = Usage("runs a Python file with arguments", "FILE [ARGS]...")

    file: str = Field(min_length=1, description="The Python file to run, e.g. `train.py`.")
    args: Args = Field(
        default_factory=list,
        description="Arguments for the file: a string (split as a shell would) or a list.",
    )
    requirements: Annotated[str, relative_path("the project")] | None = Field(
        None, min_length=1, description="A requirements file (in the project) to install first."
    )
    version: Version | None = Field(None, description='Python version, e.g. "3.11".')

    @field_validator("version")
    @classmethod
    def _python_version(cls, version: str | None) -> str | None:
        if version is not None and not re.fullmatch(r"3\.\d+(\.\d+)?", version):
            raise ValueError(f'"{version}" is not a Python 3 version; write e.g. "3.11"')
        return version

    @classmethod
    def from_cli(cls, positional: list[str]) -> tuple[dict[str, object], list[str]]:
        """`dstack run python FILE [ARGS]...`: the file, and the arguments passed through."""
        if not positional:
            raise UsageError("`dstack run python` needs the file to run",
                             "Write it as `dstack run python train.py [ARGS]...`.")
        return {"file": positional[0]}, positional[1:]

    def named_files(self) -> list[NamedFile]:
        """The file to run (not an interpreter option such as `-m`, which names a module)
        and the requirements file, installed before the setup lines run."""
        files = [NamedFile("file", self.file)] if not self.file.startswith("-") else []
        if self.requirements:
            files.append(NamedFile("requirements", self.requirements, before_setup=True))
        return files

    def job_parts(self, common: Workflow) -> JobParts:
        """Run the file with the job's Python, its args first, then the passed-through ones."""
        return JobParts(argv=["python", self.file, *self.args], requirements=self.requirements)

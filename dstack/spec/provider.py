"""What a provider is: its parameters model, its command-line form, and how it becomes a job.

Every provider (`dstack.providers.*`, found through `dstack.spec.registry`) subclasses
`Provider`: its fields are the provider's own workflow fields; `usage` says how
`dstack run PROVIDER ...` takes it; `from_cli` reads that command line into fields;
`job_parts(common)` returns what it contributes to the job (`JobParts`), given the fields every
workflow has (`common`, a `Workflow`); `named_files` lists the fields that name a file the job
opens. A validated workflow's model is both its provider's model and `Workflow`
(`dstack.spec.models.workflow_model`); `provider_of` gives its provider's side, typed.
`JobParts` and `AppPort` (from `dstack.spec.job_parts`) are re-exported here.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from dstack.spec.files import NamedFile
from dstack.spec.job_parts import AppPort as AppPort  # re-exported: the whole contract here
from dstack.spec.job_parts import JobParts as JobParts
from dstack.spec.models import SpecModel, Workflow


@dataclass(frozen=True)
class Usage:
    """How `dstack run PROVIDER` takes a provider, as its `--help` shows it."""

    summary: str
    """What the provider runs, e.g. "runs a Python file with arguments"."""
    args: str = "[ARGS]..."
    """What follows `dstack run PROVIDER`, e.g. "FILE [ARGS]..."."""

    def line(self, name: str) -> str:
        """The command line, e.g. `dstack run python FILE [ARGS]...`."""
        return f"dstack run {name} {self.args}"


class Provider(SpecModel):
    """Base of every provider's parameters model (pydantic's metaclass is an ABCMeta, so a
    provider without `job_parts` cannot be instantiated)."""

    usage: ClassVar[Usage]
    """Declared by every provider; `dstack run PROVIDER --help` shows it."""

    @classmethod
    def from_cli(cls, positional: list[str]) -> tuple[dict[str, object], list[str]]:
        """The fields `dstack run PROVIDER ARGS...` gives, and the arguments passed through to
        the job. By default no field: every argument goes to the job."""
        return {}, list(positional)

    @abstractmethod
    def job_parts(self, common: Workflow) -> JobParts:
        """What the job runs, from the provider's fields and the workflow's `common` ones."""

    def named_files(self) -> list[NamedFile]:
        """The fields naming a file the job opens from its working dir (checked before a
        run: `dstack.spec.files`). By default none."""
        return []


def provider_of(workflow: Workflow) -> Provider:
    """The provider's side of a validated workflow (`TypeError` for a bare `Workflow`, which
    no provider's fields were added to)."""
    both: object = workflow  # to mypy no class is both: their synthesized __init__s differ
    if not isinstance(both, Provider):
        raise TypeError(f"{type(workflow).__qualname__} is not a provider's workflow model; "
                        "validate it with dstack.spec.models.validate_workflow")
    return both

"""The workflow spec: validated pydantic models of the fields every workflow has.

A workflow is one flat mapping: these common fields plus its provider's `Params` fields.
`workflow_model(provider)` combines the two into one model (so `wf.file`, `wf.resources` and
`wf.depends_on` are all attributes); `workflow_file_schema()` is the JSON Schema of
`.dstack/workflows.yaml`. The field types (`Count`, `Size`, `Args`, ...) are in
`dstack.spec.fields`. Reporting problems with file, line and field is the job of
`dstack.spec.loader` (`load_workflows`) and `dstack.spec.validation` (`validate_workflow`).
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import GenericAlias
from typing import TYPE_CHECKING, Annotated, Literal, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
    create_model,
)

from dstack.json_types import JsonDoc
from dstack.spec.fields import (
    Count,
    Environment,
    EnvItem,
    Size,
    describe,
    interpolate,
    relative_path,
)
from dstack.spec.registry import PROVIDERS, provider_params

if TYPE_CHECKING:
    from typing_extensions import TypeForm  # what create_model takes as a field's type

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_NAME = re.compile(NAME_PATTERN)
LATEST = "latest"
MAX_NAME = 100


class SpecModel(BaseModel):
    """Base of every spec model: unknown keys are errors; fields take their alias or name."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, defer_build=True)


def _workflow_name(name: str) -> str:
    if len(name) > MAX_NAME:
        raise ValueError(f"a workflow name is at most {MAX_NAME} characters")
    if not _NAME.match(name):
        bad = sorted({c for c in name if not re.match(r"[A-Za-z0-9._-]", c)})
        what = f"{', '.join(map(repr, bad))} not allowed" if bad else "bad first character"
        raise ValueError(
            f"{describe(name)} is not a valid workflow name ({what}); use letters, digits, "
            '"-", "_" and ".", starting with a letter or digit'
        )
    return name


@dataclass(frozen=True)
class DepRef:
    """One `depends-on` entry: `wf:latest`, `wf:TAG` or `:TAG` (workflow None)."""

    workflow: str | None
    tag: str

    @property
    def is_latest(self) -> bool:
        """True when this means the newest successful run of `workflow`."""
        return self.tag == LATEST

    @classmethod
    def parse(cls, text: object) -> DepRef:
        """Read `wf:latest`, `wf:TAG` or `:TAG`; ValueError naming the bad entry."""
        if isinstance(text, DepRef):
            return text
        if not isinstance(text, str):
            raise ValueError(f"expected WORKFLOW:latest, WORKFLOW:TAG or :TAG, not {text!r}")
        workflow, colon, tag = text.partition(":")
        if not colon:
            raise ValueError(
                f'"{text}" has no tag; write "{text}:latest" for its newest successful run, '
                f'or "{text}:TAG"'
            )
        for part, what in ((workflow, "workflow name"), (tag, "tag")):
            if part and not _NAME.match(part):
                raise ValueError(f'"{text}": "{part}" is not a valid {what}')
        if not tag:
            raise ValueError(f'"{text}" has no tag after ":"; write e.g. "{workflow}:latest"')
        if not workflow and tag == LATEST:
            raise ValueError(f'"{text}" names no workflow; write "WORKFLOW:latest"')
        return cls(workflow or None, tag)

    def __str__(self) -> str:
        return f"{self.workflow or ''}:{self.tag}"


Dep = Annotated[
    DepRef,
    PlainValidator(DepRef.parse),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^([A-Za-z0-9][A-Za-z0-9._-]*)?:[A-Za-z0-9][A-Za-z0-9._-]*$",
            "examples": ["prepare:latest", "train:v1", ":v1"],
        }
    ),
]


class ArtifactSpec(SpecModel):
    """A folder the job writes, saved to the store as the run goes."""

    path: Annotated[str, relative_path("the working directory")] = Field(
        description="Folder relative to the working directory, e.g. `checkpoint`."
    )
    mount: bool = Field(
        False, description="Kept for workflow files that have it; changes nothing: every "
        "artifact is saved as it is written (changed files are uploaded while the job runs, "
        "and once more at its end)."
    )


def _artifact(value: object) -> object:
    return {"path": value} if isinstance(value, str) else value


Artifact = Annotated[
    ArtifactSpec, BeforeValidator(_artifact, json_schema_input_type=str | ArtifactSpec)
]


def _gpu_count(value: object) -> object:
    """A GPU count below 1 in a mapping, said the way `gpu: N` says it: 0 means no GPU."""
    if isinstance(value, int) and not isinstance(value, bool) and value < 1:
        if value < 0:
            raise ValueError(_negative_gpus(value))
        raise ValueError("must be at least 1 in a mapping, got the number 0; for no GPU "
                         "write `gpu: 0` (or leave `gpu` out)")
    return value


def _negative_gpus(value: int) -> str:
    return f"a GPU count cannot be negative, got {value}; it is 0 (no GPU) or more"


class GpuSpec(SpecModel):
    """GPUs the job needs."""

    count: Annotated[Count, BeforeValidator(_gpu_count)] = Field(
        1, ge=1, description="Number of GPUs.")
    name: str | None = Field(None, min_length=1, description="GPU model, e.g. `A100`.")
    memory_bytes: Size | None = Field(
        None, alias="memory", description="Least memory per GPU, e.g. `24GB`."
    )


def _gpu(value: object) -> object:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, (bool, str, float, list)):
        raise ValueError(
            f"expected a GPU count such as 1, or a mapping such as {{count: 2, name: A100, "
            f"memory: 40GB}}, got {describe(value)}"
        )
    if isinstance(value, int):
        if value < 0:
            raise ValueError(_negative_gpus(value))
        return {"count": value} if value else None
    return value


class Resources(SpecModel):
    """What the machine that runs the job must have."""

    cpu: Count | None = Field(None, ge=1, description="Least number of CPUs.")
    memory: Size | None = Field(None, description="Least memory, e.g. `16GB`.")
    gpu: Annotated[
        GpuSpec | None, BeforeValidator(_gpu, json_schema_input_type=int | GpuSpec | None)
    ] = Field(None, description="GPU count, or {count, name, memory}; 0 means none.")
    shm_size: Size | None = Field(None, description="Shared memory (/dev/shm) size, e.g. `8GB`.")
    disk: Size | None = Field(None, description="Least disk size, e.g. `100GB`.")
    interruptible: bool = Field(
        False, description="Use spot/preemptible instances, which may be stopped at any time."
    )


class Workflow(SpecModel):
    """The fields every workflow has; `workflow_model(provider)` adds the provider's."""

    name: Annotated[str, AfterValidator(_workflow_name)] | None = Field(
        None, description="Name used by `dstack run NAME` and in `depends-on`."
    )
    help: str | None = Field(None, description="One line shown by `dstack run --help`.")
    provider: str = Field(description="The provider that runs the job, e.g. `python`.")
    depends_on: list[Dep] = Field(
        default_factory=list,
        alias="depends-on",
        description="Runs whose artifacts this one uses: `wf:latest`, `wf:TAG` or `:TAG`.",
    )
    artifacts: list[Artifact] = Field(
        default_factory=list, description="Folders to save: paths or {path, mount}."
    )
    resources: Resources = Field(default_factory=Resources, description="Hardware the job needs.")
    environment: Environment = Field(
        default_factory=dict, description="Environment variables, NAME: value."
    )
    env: list[EnvItem] = Field(
        default_factory=list,
        description="Environment variables as KEY=VALUE; $VAR and ${VAR} come from your shell.",
    )
    working_dir: Annotated[str, relative_path("the project")] | None = Field(
        None, description="Directory inside the project the job runs in."
    )
    setup: list[str] = Field(
        default_factory=list, description="Shell commands run before the job, e.g. installs."
    )

    def effective_env(self, outer: Mapping[str, str]) -> dict[str, str]:
        """`environment` overlaid with `env`, whose values interpolate `$VAR` from `outer`."""
        merged = dict(self.environment)
        for item in self.env:
            key, _, value = item.partition("=")
            merged[key] = interpolate(value, outer)
        return merged


@functools.cache
def workflow_model(provider: str) -> type[Workflow]:
    """The model of a `provider` workflow: `Workflow` fields plus the provider's own (its
    `dstack.spec.provider.Provider` model), so an instance is both."""
    params = provider_params(provider)
    clash = set(params.model_fields) & set(Workflow.model_fields)
    if clash:
        raise TypeError(f"{params.__qualname__} redefines common fields: {sorted(clash)}")
    tag = cast("TypeForm[object]", Literal[provider])  # made at run time: mypy cannot name it
    model = create_model(
        f"{provider.capitalize()}Workflow",
        __base__=(params, Workflow),  # common fields first in the schema
        __module__=__name__,
        __doc__=f"A workflow run by the {provider} provider.",
        provider=(tag, Field(description="The provider that runs the job.")),
    )
    return cast("type[Workflow]", model)


def workflow_file_schema() -> JsonDoc:
    """JSON Schema of a workflow file: `{workflows: [one of the provider workflows]}`."""
    models = [workflow_model(name) for name in PROVIDERS]
    # Types made at run time, which mypy cannot name: one of the models, told by `provider`.
    one_of = functools.reduce(operator.or_, models)
    item: object = Annotated[one_of, Field(discriminator="provider")]
    workflows = cast("TypeForm[object]", GenericAlias(list, item))
    file_model = create_model(
        "WorkflowFile",
        __base__=SpecModel,
        __module__=__name__,
        __doc__="A dstack workflow file, `.dstack/workflows.yaml`.",
        workflows=(workflows, Field(description="The workflows, each a provider's fields.")),
    )
    schema = file_model.model_json_schema(by_alias=True)
    for model in models:  # `name` may be left out on the command line, but not in a file
        definition = schema["$defs"][model.__name__]
        definition["required"] = ["name", *definition.get("required", [])]
        name = definition["properties"]["name"]
        name.update(type="string", pattern=NAME_PATTERN, maxLength=MAX_NAME)
        name.pop("anyOf", None)
        name.pop("default", None)
    schema["patternProperties"] = {"^x-": {}}  # free keys, e.g. to hold YAML anchors
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}

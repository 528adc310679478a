"""The `dstack run` flags that change a workflow: `RunOptions`, applied to the workflow's
fields (`apply_options`); a bad value they give blames the flag, not the workflow file
(`check_flags`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dstack.errors import UsageError
from dstack.json_types import JsonDoc
from dstack.spec.problems import format_path
from dstack.spec.validation import check_workflow


@dataclass
class RunOptions:
    """The `dstack run` flags that change a workflow (None: keep the workflow's value)."""

    deps: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    gpu: int | None = None
    gpu_name: str | None = None
    gpu_memory: str | None = None
    cpu: int | None = None
    memory: str | None = None
    interruptible: bool | None = None
    env: list[str] = field(default_factory=list)
    env_files: list[str] = field(default_factory=list)
    requirements: str | None = None
    working_dir: str | None = None
    tag: str | None = None


def apply_options(data: JsonDoc, opts: RunOptions) -> JsonDoc:
    """The workflow fields with the command line's flags applied."""
    data = dict(data)
    data["depends-on"] = [*data.get("depends-on", []), *opts.deps]
    data["artifacts"] = [*data.get("artifacts", []), *opts.artifacts]
    data["env"] = [*data.get("env", []), *opts.env]
    resources = dict(data.get("resources") or {})
    for key in ("cpu", "memory", "interruptible"):
        if getattr(opts, key) is not None:
            resources[key] = getattr(opts, key)
    if opts.gpu is not None or opts.gpu_name or opts.gpu_memory:
        gpu = resources.get("gpu")
        gpu = dict(gpu) if isinstance(gpu, Mapping) else ({"count": gpu} if gpu else {})
        if opts.gpu is not None:
            gpu["count"] = opts.gpu
        if opts.gpu_name:
            gpu["name"] = opts.gpu_name
        if opts.gpu_memory:
            gpu["memory"] = opts.gpu_memory
        if gpu.get("count", 1) == 0 and (opts.gpu_name or opts.gpu_memory):
            wanted = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                              (("gpu_name", opts.gpu_name), ("gpu_memory", opts.gpu_memory))
                              if v)
            raise UsageError(f"{wanted} describes a GPU, and the run asks for none "
                             f"(--gpu 0{'' if opts.gpu == 0 else ' in the workflow'})",
                             "Drop one of them: --gpu 0 for no GPU, or --gpu N (1 or more) "
                             "with the GPU's name or memory.")
        resources["gpu"] = gpu if gpu.get("count", 1) else 0
    if resources:
        data["resources"] = resources
    if opts.working_dir is not None:
        data["working_dir"] = opts.working_dir
    if opts.requirements is not None:
        data["requirements"] = opts.requirements
    return data


def _flag_of(path: tuple[object, ...]) -> str | None:
    """The `dstack run` flag that set the field at `path`, if one did."""
    head = path[0] if path else None
    if head == "resources" and len(path) > 1:
        if path[1] == "gpu":
            rest = set(path[2:])
            return "--gpu-memory" if "memory" in rest or "memory_bytes" in rest else \
                "--gpu-name" if "name" in rest else "--gpu"
        return {"cpu": "--cpu", "memory": "--memory",
                "interruptible": "--interruptible"}.get(str(path[1]))
    return {"env": "--env", "depends-on": "--dep", "depends_on": "--dep",
            "artifacts": "--artifact", "working_dir": "--working-dir",
            "requirements": "--requirements"}.get(str(head))


def check_flags(provider: str, flags: Mapping[str, object]) -> None:
    """Validate the values the flags give, blaming the flag (not the workflow file)."""
    _wf, problems = check_workflow({"provider": provider, **flags})
    for problem in problems:
        flag = _flag_of(tuple(problem.path))
        if flag is not None:
            raise UsageError(f"{flag}: {format_path(problem.path)}: {problem.message}",
                             f"Fix the value of {flag}; `dstack run --help` lists the flags.")

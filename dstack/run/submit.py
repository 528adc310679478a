"""From `dstack run TARGET ...` to a submitted run: spec, overrides, deps, job, code, record.

`plan_run` does everything that can fail on bad input and creates nothing (it counts the
code to package and refuses a project over the profile's `max_code_size`); `submit` then
packages the code, claims the run's name and brings up its stack. Problems in the project's
workflow files stop only the runs that need what is wrong: a provider run, or a workflow
that is fine itself, goes ahead with a warning.
"""

from __future__ import annotations

import os
import posixpath
import secrets
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from dstack.code.packaging import DEFAULT_MAX_BYTES, CodeInventory, scan_code, write_code
from dstack.code.uploads import upload_code
from dstack.config.profiles import Profile
from dstack.errors import NotFoundError, SpecError, UsageError
from dstack.interrupts import Deferred
from dstack.json_types import JsonDoc
from dstack.names import did_you_mean
from dstack.run.context import Context, Say, quiet
from dstack.run.following import Cursor, attach, write_new_records
from dstack.run.job import ArtifactPath, Job
from dstack.run.lifecycle import provision, submitter
from dstack.run.options import RunOptions, apply_options, check_flags
from dstack.run.project import project_of
from dstack.run.record import RunRecord, create_run, run_stack_name
from dstack.run.tags import check_tag_name, resolve_ref, unknown_workflow
from dstack.sizes import SizeError, parse_size
from dstack.spec.env_file import read_env_files
from dstack.spec.files import CodeFiles, check_run_files, fetched
from dstack.spec.loader import (
    Workflows,
    load_workflows,
    runnable_workflows,
    workflow_files,
)
from dstack.spec.models import DepRef, Workflow
from dstack.spec.provider import provider_of
from dstack.spec.registry import PROVIDERS, provider_params
from dstack.spec.validation import validate_workflow
from dstack.store.job_log import WriteLog
from dstack.store.keys import artifact_prefix, tag_key
from dstack.store.local import LocalStore
from dstack.store.secrets import list_secrets, put_run_env


@dataclass
class RunPlan:
    """A run ready to submit: the validated workflow, its job and resolved dependencies."""

    workflow: Workflow
    workflow_name: str | None
    job: Job
    deps: list[str]
    tag: str | None
    project_dir: Path
    code: CodeInventory | None = None
    project: str | None = None
    stored_env: dict[str, str] = field(default_factory=dict, repr=False)
    """The `--env-file` values (`job.stored_env` names them), put in the store, not the record."""
    warnings: list[str] = field(default_factory=list)


def workflows_for(project_dir: Path, target: str) -> tuple[Workflows, str | None]:
    """The project's workflows `dstack run TARGET` may use, and a warning when its files have
    problems that do not concern TARGET (else the `SpecError` listing them)."""
    try:
        return load_workflows(project_dir), None
    except SpecError as exc:
        workflows, names = runnable_workflows(project_dir)
        files = workflow_files(project_dir)
        where, it = ((files[0].relative_to(project_dir).as_posix(), "it") if len(files) == 1
                     else ("the workflow files in .dstack", "them"))
        if target in workflows:
            return workflows, (f"warning: {where} has problems outside workflow {target} "
                               "(`dstack validate` lists them)")
        if target in PROVIDERS and target not in (names or ()):
            return workflows, (f"warning: {where} has problems (`dstack validate` lists "
                               f"them); this run of the {target} provider does not use {it}")
        raise exc from None


def _target_data(project_dir: Path, target: str, positional: Sequence[str]
                 ) -> tuple[JsonDoc, list[str], str, str | None, str | None]:
    """(workflow fields, pass-through args, origin, workflow name, warning) for `dstack run
    TARGET`."""
    workflows, warning = workflows_for(project_dir, target)
    if target in workflows:
        wf = workflows[target]
        data = wf.model_dump(by_alias=True, exclude_unset=True, mode="json")
        return data, list(positional), str(workflows.location(target)), target, warning
    if target in PROVIDERS:
        fields, rest = provider_params(target).from_cli(list(positional))
        return {"provider": target, **fields}, rest, "the command line", None, warning
    names = [*workflows, *PROVIDERS]
    raise UsageError(
        f"{target!r} is neither a workflow of {project_dir / '.dstack'} nor a provider",
        did_you_mean(target, names) or
        (f"Workflows: {', '.join(workflows) or '(none)'}. Providers: {', '.join(PROVIDERS)}."),
    )


def code_limit(profile: Profile) -> int:
    """The most bytes a run's code may hold: the profile's `max_code_size`, else 100 MB."""
    value = profile.settings.get("max_code_size")
    if value in (None, ""):
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(value)
    except SizeError as exc:
        raise UsageError(f"profile {profile.name!r}: max_code_size: {exc.message}",
                         f"Fix it: `dstack config set {profile.name} max_code_size 500MB`."
                         ) from None


def scan_project(ctx: Context, project_dir: Path) -> CodeInventory:
    """What a run from `project_dir` would package with this profile (writes nothing); the
    dstack home and a local store are never packaged."""
    store = ctx.store
    return scan_code(project_dir, max_bytes=code_limit(ctx.profile), home=ctx.home,
                     protect=[store.root] if isinstance(store, LocalStore) else [],
                     profile=ctx.profile.name)


def make_job(wf: Workflow, args: list[str], outer_env: Mapping[str, str],
             stored_env: Sequence[str] = ()) -> Job:
    """The job of a validated workflow (the provider supplies the command and ports);
    `stored_env` names the variables whose values the runner gets from the store."""
    if stored_env:  # a provider that passes variables by name (docker -e NAME) needs them too
        wf = wf.model_copy(update={"env": [*wf.env, *(f"{k}=" for k in stored_env)]})
    parts = provider_of(wf).job_parts(wf)
    workdir = wf.working_dir or "."
    token = secrets.token_urlsafe(24) if parts.token else None
    return Job(
        provider=wf.provider,
        setup=[*wf.setup, *parts.setup],
        shell=parts.shell,
        argv=parts.argv,
        args=args,
        env={**{k: v for k, v in wf.effective_env(outer_env).items() if k not in stored_env},
             **parts.secret_env},
        secret_env=sorted(parts.secret_env),
        stored_env=sorted(set(stored_env) - set(parts.secret_env)),
        working_dir=workdir,
        artifacts=[ArtifactPath(path=posixpath.normpath(posixpath.join(workdir, a.path)))
                   for a in wf.artifacts],
        requirements=(posixpath.normpath(posixpath.join(workdir, parts.requirements))
                      if parts.requirements else None),
        packages=parts.packages,
        ports=parts.ports,
        apps=parts.apps,
        token=token,
        resources=wf.resources.model_dump(mode="json", exclude_none=True),
        needs_docker=parts.needs_docker,
        needs_secrets=parts.needs_secrets,
    )


def _resolve_dep(ctx: Context, project_dir: Path, target: str, dep: DepRef,
                 project: str | None) -> RunRecord:
    """The run a dependency names; one naming a workflow that is neither in the project's
    files nor in any recorded run is an unknown workflow (only `--dep` can name one: the
    workflow files' own are checked when they are loaded)."""
    try:
        return resolve_ref(ctx.store, dep.workflow, dep.tag, ctx.listing_cache,
                           project=project)
    except NotFoundError as exc:
        if dep.workflow is None:
            raise
        defined = workflows_for(project_dir, target)[0]
        unknown = unknown_workflow(ctx.store, dep.workflow, list(defined), ctx.listing_cache)
        if unknown is None:
            raise
        raise UsageError(f"--dep {dep}: {unknown.message}", unknown.hint) from exc


def _check_files(ctx: Context, project_dir: Path, target: str, wf: Workflow, name: str | None,
                 cli_fields: Mapping[str, object], opts: RunOptions, deps: Sequence[RunRecord],
                 code: CodeInventory) -> None:
    """Refuse a run whose workflow names a file neither its code nor its dependencies'
    artifacts will hold (`dstack.spec.files`), blaming the argument or flag that gave the
    value, else the workflow file's line."""
    set_by = {key: f"`dstack run {target} {value}`" for key, value in cli_fields.items()}
    for key in ("requirements", "working_dir"):
        if (value := getattr(opts, key)) is not None:
            set_by[key] = f"--{key.replace('_', '-')} {value}"
    brought = fetched(ctx.store.list, [artifact_prefix(run.name) for run in deps])
    check_run_files(project_dir, wf, CodeFiles.of(code), brought, name, set_by,
                    lambda: workflows_for(project_dir, target)[0])


def plan_run(ctx: Context, project_dir: Path, target: str, positional: Sequence[str],
             opts: RunOptions, after_dashes: Sequence[str] = ()) -> RunPlan:
    """Validate everything about a run without creating anything.

    `positional` holds the arguments dstack did not recognise (the provider form's own,
    then the job's); `after_dashes` what followed `--`, which always goes to the job.
    """
    data, args, origin, name, warning = _target_data(project_dir, target, positional)
    args = [*args, *after_dashes]
    check_flags(str(data.get("provider")), apply_options({}, opts))
    wf = validate_workflow(apply_options(data, opts), origin=origin)
    if opts.tag is not None:  # `--tag ""` is refused, not ignored
        try:
            check_tag_name(opts.tag)
        except UsageError as exc:
            raise UsageError(f"--tag: {exc.message}", exc.hint) from None
        if ctx.store.exists(tag_key(opts.tag)):
            raise UsageError(f"tag {opts.tag!r} already exists",
                             f"Choose another tag, or delete it first: "
                             f"`dstack tags delete {opts.tag}`.")
    from_cli = {item.partition("=")[0] for item in opts.env}  # --env wins over the file
    stored = {k: v for k, v in read_env_files(opts.env_files).items() if k not in from_cli}
    job = make_job(wf, args, os.environ, list(stored))
    missing = sorted(set(job.needs_secrets) - set(list_secrets(ctx.store)))
    if missing:
        raise UsageError(f"workflow {name} needs the secret(s) {', '.join(missing)}, which "
                         f"profile {ctx.profile.name} does not have",
                         f"Add it: `dstack secrets add {missing[0]}` (the value is asked "
                         "for without echo).")
    ctx.backend.check_resources(job)
    project = project_of(project_dir)
    deps = [_resolve_dep(ctx, project_dir, target, ref, project) for ref in wf.depends_on]
    code = scan_project(ctx, project_dir)
    cli_fields = {k: v for k, v in data.items() if k != "provider"} if name is None else {}
    _check_files(ctx, project_dir, target, wf, name, cli_fields, opts, deps, code)
    return RunPlan(workflow=wf, workflow_name=name, job=job, deps=[d.name for d in deps],
                   tag=opts.tag, project_dir=project_dir, code=code,
                   project=project, warnings=[warning] if warning else [],
                   stored_env=stored)


class CodeSize(TypedDict):
    files: int
    bytes: int


class PlannedStack(TypedDict):
    """A stack a run would bring up, and each resource it would declare."""

    name: str
    resources: list[dict[str, str]]


class DryRun(TypedDict):
    """What `dstack run --dry-run` shows (`dry_run`)."""

    workflow: str | None
    project: str | None
    provider: str
    profile: str
    backend: str
    deps: list[str]
    job: dict[str, object]
    instance: dict[str, str] | None
    code: CodeSize
    stacks: list[PlannedStack]


def dry_run(ctx: Context, plan: RunPlan) -> DryRun:
    """What `dstack run --dry-run` shows: the job, the instance and its price, and every
    resource of each stack a run would bring up (the profile's workspace stack too, until its
    first run has created it). Creates nothing and asks no cloud API."""
    stacks: dict[str, list[dict[str, str]]] = {}
    for item in ctx.backend.plan_resources(plan.job):
        resource = dict(item)
        stacks.setdefault(resource.pop("stack", "run-<name>"), []).append(resource)
    instance = next((r for r in stacks.get("run-<name>", []) if r.get("price_per_hour")), None)
    code = plan.code or scan_project(ctx, plan.project_dir)
    return {"workflow": plan.workflow_name, "project": plan.project,
            "provider": plan.job.provider,
            "profile": ctx.profile.name, "backend": ctx.profile.backend, "deps": plan.deps,
            "job": plan.job.redacted(), "instance": instance,
            "code": {"files": code.files, "bytes": code.bytes},
            "stacks": [{"name": name, "resources": items} for name, items in  # run last
                       sorted(stacks.items(), key=lambda kv: kv[0] == "run-<name>")]}


def record_run(ctx: Context, plan: RunPlan, *, detached: bool = False,
               say: Say = quiet) -> RunRecord:
    """Package the code into the store and claim the run's name with its record.

    The project is scanned again: it may have changed since `plan_run` (a cloud profile's
    first run brings its workspace up in between). What is left out is told through `say`.
    """
    inventory = scan_project(ctx, plan.project_dir)
    for warning in inventory.warnings:
        say(warning)
    with tempfile.TemporaryDirectory(prefix="dstack-code-") as tmp:
        archive = write_code(inventory, Path(tmp))
        upload_code(ctx.store, archive)
    say(f"packaged {archive.files} file(s) of {plan.project_dir}")

    owner = ctx.backend.identity()

    def make(name: str) -> RunRecord:
        return RunRecord(
            name=name, workflow=plan.workflow_name, project=plan.project,
            provider=plan.workflow.provider,
            profile=ctx.profile.name, backend=ctx.profile.backend, job=plan.job,
            deps=plan.deps, code=archive.sha256, tag=plan.tag, stack=run_stack_name(name),
            submitter=submitter(), detached=detached, owner=owner,
        )

    run = create_run(ctx.store, make)
    if plan.job.stored_env:  # before the stack is up: its runner reads them at the start
        put_run_env(ctx.store, run.name, {k: plan.stored_env[k] for k in plan.job.stored_env})
    say(f"run {run.name} submitted")
    return run


def submit(ctx: Context, plan: RunPlan, *, detached: bool = False, say: Say = quiet,
           on_created: Callable[[RunRecord], None] | None = None) -> RunRecord:
    """Package the code, record the run and bring up its stack.

    `on_created` is called once the run's record exists, before its stack is up. The
    profile's workspace comes first: the code and the record go to its bucket.
    """
    ctx.ensure_workspace(say)
    run = record_run(ctx, plan, detached=detached, say=say)
    if on_created:
        on_created(run)
    return provision(ctx, run, say)


class _EarlyOutput:
    """Streams a run's first output while its stack is still coming up: the runner starts
    before the engine has finished saving the update."""

    def __init__(self, ctx: Context, cursor: Cursor, write: WriteLog) -> None:
        self.ctx, self.cursor, self.write = ctx, cursor, write
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, run: RunRecord) -> None:
        self._thread = threading.Thread(target=self._loop, args=(run.name,), daemon=True)
        self._thread.start()

    def _loop(self, name: str) -> None:
        while not self._stop.wait(self.ctx.store.poll_s):
            write_new_records(self.ctx, name, self.cursor, self.write)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def run_attached(ctx: Context, plan: RunPlan, write: WriteLog,
                 say: Say = quiet, interrupts: Deferred | None = None) -> RunRecord:
    """Submit a run and follow it to its end, its output streamed from the first line."""
    cursor = Cursor()
    early = _EarlyOutput(ctx, cursor, write)
    try:
        record = submit(ctx, plan, say=say, on_created=early.start)
    finally:
        early.stop()
    return attach(ctx, record.name, write, say, interrupts, cursor)

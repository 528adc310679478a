"""Commands about runs: run, ps, logs, connect, stop, rm, audit, gc."""

from __future__ import annotations

import os
import time
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from dstack.cli import output
from dstack.cli.options import (
    JsonOpt,
    Profile,
    ProjectOpt,
    Yes,
    confirm,
    gc_paused,
    open_context,
    project_folder,
)

if TYPE_CHECKING:
    from dstack.json_types import JsonDoc
    from dstack.run.audit import AuditEntry
    from dstack.run.record import RunRecord
    from dstack.store.job_log import Stream

runs_app = typer.Typer()
"""The run commands; the app adds them at its top level."""


def _ago(ts: str) -> str:
    """`ts` in local time, `%Y-%m-%d %H:%M:%S`: as `astimezone().isoformat(" ", "seconds")`
    writes it, through `time.localtime` when `ts` has an offset (twice as fast)."""
    when = datetime.fromisoformat(ts)
    if when.tzinfo is None or when.year < 1000:  # local already; a year strftime won't pad
        return when.astimezone().isoformat(" ", "seconds")[:19]
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when.timestamp()))


def _touched(update: AuditEntry) -> str:
    """An audited update's resources, or Pulumi's counts when dstack has no record of them."""
    if update["resources"] is None:
        return ", ".join(f"{op} {n}" for op, n in update["pulumi_changes"].items()) + \
            " (Pulumi's count)"
    return ", ".join(f"{c['op']} {c['type'].rsplit(':', 1)[-1]} {c['name']}"
                     for c in update["resources"]) or "none"


def _ended(final: RunRecord) -> int:
    """Say how the run ended; the exit code that passes it on."""
    from dstack.run.lifecycle import exit_code

    output.say(f"{final.name} {final.status.value}"
               + (f": {final.message}" if final.message else ""))
    return exit_code(final)


@runs_app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
                  help="Run a workflow, or a provider directly (`dstack run python train.py`). "
                       "Flags dstack does not know, and everything after `--`, go to the job.")
def run(
    target: Annotated[str, typer.Argument(metavar="WORKFLOW|PROVIDER",
                                          help="A workflow name or a provider name.")],
    args: Annotated[list[str] | None, typer.Argument(help="Passed to the job.")] = None,
    detach: Annotated[bool, typer.Option("-d", "--detach",
                                         help="Return once the run started.")] = False,
    profile: Profile = None,
    dep: Annotated[list[str] | None, typer.Option("--dep", help="Dependency: wf:latest, "
                                                   "wf:TAG or :TAG (repeat).")] = None,
    artifact: Annotated[list[str] | None, typer.Option(
        "--artifact", help="Folder to save (repeat).")] = None,
    gpu: Annotated[int | None, typer.Option("--gpu", help="Number of GPUs.")] = None,
    gpu_name: Annotated[str | None, typer.Option("--gpu-name", help="GPU model.")] = None,
    gpu_memory: Annotated[str | None, typer.Option("--gpu-memory",
                                                   help="Memory per GPU, e.g. 24GB.")] = None,
    cpu: Annotated[int | None, typer.Option("--cpu", help="Number of CPUs.")] = None,
    memory: Annotated[str | None, typer.Option("--memory", help="Memory, e.g. 16GB.")] = None,
    interruptible: Annotated[bool | None, typer.Option(
        "--interruptible", help="Use spot instances.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", help="K=V (repeat).")] = None,
    env_file: Annotated[list[str] | None, typer.Option(
        "--env-file", metavar="FILE",
        help="A file of KEY=VALUE lines for the job's env (repeat; --env wins). Unlike "
             "--env values, its values are treated as secrets: kept out of the run record "
             "and --dry-run, masked in logs (those of 4+ characters).")] = None,
    requirements: Annotated[str | None, typer.Option(
        "--requirements", help="Requirements file.")] = None,
    working_dir: Annotated[str | None, typer.Option("--working-dir",
                                                    help="Working directory.")] = None,
    tag: Annotated[str | None, typer.Option("--tag",
                                            help="Tag the run if it succeeds.")] = None,
    dry_run_: Annotated[bool, typer.Option("--dry-run", help="Show the plan; create "
                                                             "nothing.")] = False,
    project: ProjectOpt = None,
) -> int:
    from dstack.interrupts import deferred_sigint
    from dstack.run.options import RunOptions
    from dstack.run.submit import dry_run, plan_run, run_attached, submit

    opts = RunOptions(deps=dep or [], artifacts=artifact or [], gpu=gpu, gpu_name=gpu_name,
                      gpu_memory=gpu_memory, cpu=cpu, memory=memory,
                      interruptible=interruptible, env=env or [], env_files=env_file or [],
                      requirements=requirements, working_dir=working_dir, tag=tag)
    ctx = open_context(profile)
    project_dir = project_folder(project, job_starts_at_root=working_dir is None)
    plan = plan_run(ctx, project_dir, target, args or [], opts,
                    after_dashes=output.state.after_dashes)
    for warning in plan.warnings:
        output.say(warning)
    if dry_run_:
        from dstack.sizes import format_decimal

        shown = dry_run(ctx, plan)
        for warning in plan.code.warnings if plan.code else []:
            output.say(warning)
        output.say(f"would package {shown['code']['files']} file(s), "
                   f"{format_decimal(shown['code']['bytes'])}")
        for stack in shown["stacks"]:
            output.say(f"would bring up stack {stack['name']}: "
                       f"{len(stack['resources'])} resource(s)")
        if shown["instance"]:
            output.say(f"the instance would be {shown['instance']['what']}")
        output.print_json(shown)
        return 0
    if detach:
        record = submit(ctx, plan, detached=True, say=output.say)
        output.say(f"{record.name} runs detached: `dstack logs {record.name} -f`, "
                   f"`dstack stop {record.name}`")
        print(record.name)
        return 0
    reader_gone = False

    def write(stream: Stream, data: bytes) -> None:
        """The job's output; when stdout's reader leaves, the run stops as for Ctrl-C."""
        nonlocal reader_gone
        try:
            output.write_log(stream, data)
        except output.ReaderGone:
            if not reader_gone:
                reader_gone = True
                output.say("the reader of the output is gone (a closed pipe): stopping the run")
                interrupts.count += 1

    with deferred_sigint() as interrupts:  # from here on, Ctrl-C stops the run
        final = run_attached(ctx, plan, write, output.say, interrupts)
    if reader_gone:
        raise output.ReaderGone
    return _ended(final)


@runs_app.command()
def ps(
    run_name: Annotated[str | None, typer.Argument(metavar="RUN", help="One run.")] = None,
    all_runs: Annotated[bool, typer.Option("-a", "--all", help="All runs.")] = False,
    all_projects: Annotated[bool, typer.Option(
        "--all-projects", help="Runs of every project, not only this one's.")] = False,
    project: ProjectOpt = None,
    mine: Annotated[bool, typer.Option(
        "--mine", help="Only runs you started (as the profile's identity).")] = False,
    profile: Profile = None,
    json_out: JsonOpt = False,
) -> None:
    """List the project's runs: unfinished ones and the 10 most recent (all with -a)."""
    from dstack.durations import format_elapsed
    from dstack.run.billing import format_cost
    from dstack.run.listing import run_docs, run_summary, shown_runs
    from dstack.run.project import project_label, project_of
    from dstack.run.record import load_run
    from dstack.run.row_cache import rows
    from dstack.run.tags import tags_of

    ctx = open_context(profile)
    with gc_paused():  # tens of thousands of rows: no cycles among them
        if run_name:
            docs = [load_run(ctx.store, run_name).model_dump(mode="json")]
        else:
            every = run_docs(ctx.store, ctx.listing_cache)
            if mine:
                me = ctx.backend.identity()
                every = [d for d in every if d.get("owner") == me]
            here = None if all_projects else project_of(project_folder(project))
            docs = shown_runs(every, here, all_projects=all_projects, all_runs=all_runs)
            if not docs and every and not all_projects:
                output.say(f"no runs of this project ({here}); `dstack ps -a --all-projects` "
                           f"lists the {len(every)} run(s) of other projects")
        tags = tags_of(ctx.store, ctx.listing_cache)
        now = time.time()
        if json_out:
            output.print_json_rows(  # written as they are made
                run_summary(d, tags.get(d["name"], []), now) for d in docs)
            return

        def render(doc: JsonDoc) -> list[str]:
            r = run_summary(doc, [], now)
            return [str(r["run"]), str(r["workflow"]), project_label(r["project"]),
                    str(r["provider"]), str(r["status"]), _owner(r["owner"]),
                    _ago(str(r["submitted"])), format_elapsed(r["duration"]),
                    format_cost(r["cost"]), str(r["backend"]), ", ".join(r["artifacts"]),
                    " ".join(r["apps"])]

        cells = rows(ctx.listing_rows, _ROWS_KEY + _zone(), docs, render)
        apps = any(c[11] for c in cells)
        cols = ["RUN", "WORKFLOW", *(["PROJECT"] if all_projects else []), "PROVIDER",
                "STATUS", "OWNER", "SUBMITTED", "DURATION", "COST", "BACKEND", "TAGS",
                "ARTIFACTS", *(["APPS"] if apps else [])]
        output.table(cols, [
            [c[0], c[1], *(c[2:3] if all_projects else ()), *c[3:10],
             ", ".join(tags.get(c[0], ())), c[10], *(c[11:] if apps else ())]
            for c in cells
        ])
        if run_name and docs[0].get("message"):  # one run: why it ended the way it did
            print(f"message: {docs[0]['message']}")


_ROWS_KEY = "ps-1|"
"""How `dstack ps` renders a row (bump it when that changes): the key of the kept rows."""


def _zone() -> str:
    """The local time zone, as far as it changes how times are shown (`_ago`)."""
    try:
        st = os.stat("/etc/localtime")
        system = f"{os.path.realpath('/etc/localtime')}@{st.st_mtime_ns}"
    except OSError:
        system = ""
    return "|".join([os.environ.get("TZ", ""), *time.tzname, str(time.timezone),
                     str(time.altzone), system])


def _owner(owner: str | None) -> str:
    """The owner as a column shows it: an ARN's last part (`user/alice`), else as recorded."""
    if not owner:
        return "—"
    return owner.split(":")[-1] if owner.startswith("arn:") else owner


@runs_app.command()
def logs(
    run_name: Annotated[str, typer.Argument(metavar="RUN")],
    follow_: Annotated[bool, typer.Option("-f", "--follow", help="Keep following.")] = False,
    profile: Profile = None,
) -> int:
    """Print a run's output: the job's stdout to stdout, its stderr and dstack's lines to
    stderr. With -f, follow it to its end, destroy its stack when no other dstack watches it
    (a detached run), and exit with the run's exit code, as `dstack run` does."""
    from dstack.run.following import follow
    from dstack.run.lifecycle import close_run, needs_teardown
    from dstack.run.record import load_run

    ctx = open_context(profile)
    load_run(ctx.store, run_name)
    final = follow(ctx, run_name, output.write_log,
                   output.say if follow_ else lambda _m: None, until_finished=follow_)
    if not follow_:
        return 0
    if needs_teardown(ctx, final):  # else the next command would: a GPU would wait for it
        close_run(ctx, run_name, output.say)
    if not final.status.finished:
        output.say(f"the runner of {run_name} is gone before the run ended; "
                   f"`dstack ps {run_name}` shows what is known")
        return 1
    return _ended(final)


@runs_app.command()
def connect(
    run_name: Annotated[str, typer.Argument(metavar="RUN")],
    profile: Profile = None,
) -> None:
    """Open a running run's apps from here and print their URLs (on Kubernetes, through a
    port-forward); they stay open until the run ends or Ctrl-C."""
    from dstack.errors import UsageError
    from dstack.run.following import follow
    from dstack.run.record import load_run

    ctx = open_context(profile)
    run = load_run(ctx.store, run_name)
    if run.status.finished:
        raise UsageError(f"run {run_name} is {run.status.value}: it serves no app any more",
                         "`dstack ps -a` lists the runs; start the workflow again with "
                         "`dstack run`.")
    if not run.job.ports:
        raise UsageError(f"run {run_name} serves no app", "Apps come from the streamlit, "
                         "gradio, fastapi, lab, code and notebook providers, or `ports`.")
    output.say(f"connecting to the apps of {run_name} (Ctrl-C closes them)")
    follow(ctx, run_name, lambda _stream, _data: None, output.say)
    output.say(f"{run_name} ended: its apps are closed")


@runs_app.command(name="stop")
def stop_cmd(
    run_name: Annotated[str, typer.Argument(metavar="RUN")],
    abort: Annotated[bool, typer.Option("--abort", help="Kill the job at once, without "
                                                        "the final artifact sync.")] = False,
    yes: Yes = False,
    profile: Profile = None,
) -> None:
    """Stop a run (saving its artifacts) and destroy its stack."""
    from dstack.run.lifecycle import stop
    from dstack.run.record import load_run

    ctx = open_context(profile)
    if not load_run(ctx.store, run_name).status.finished:
        confirm(f"{'Abort' if abort else 'Stop'} run {run_name}?", yes)
    final = stop(ctx, run_name, abort=abort, say=output.say)
    output.say(f"{run_name} {final.status.value}")


@runs_app.command()
def rm(
    run_name: Annotated[str, typer.Argument(metavar="RUN")],
    yes: Yes = False,
    profile: Profile = None,
) -> None:
    """Delete a finished run, its logs and artifacts (its stack history stays:
    `dstack audit RUN` still shows it)."""
    from dstack.run.lifecycle import remove_run
    from dstack.run.record import load_run

    ctx = open_context(profile)
    load_run(ctx.store, run_name)
    confirm(f"Delete run {run_name} with its logs and artifacts?", yes)
    remove_run(ctx, run_name)
    output.say(f"removed {run_name}")


@runs_app.command()
def audit(
    run_name: Annotated[str, typer.Argument(metavar="RUN")],
    profile: Profile = None,
    json_out: JsonOpt = False,
) -> None:
    """What the run's stack created and destroyed, and when (from Pulumi's history, also
    for a removed run)."""
    from dstack.run.audit import audit_run

    ctx = open_context(profile)
    found = audit_run(ctx.store, ctx.backend, run_name)
    if found.removed:
        output.say(f"the record of run {run_name} was removed (`dstack rm`): only its "
                   "stack's history is shown, with Pulumi's counts (they include the "
                   "stack's own resource)")
    if found.owner:
        output.say(f"run {run_name} was started by {found.owner}")
    if json_out:
        output.print_json(found.updates)
    else:
        output.table(["UPDATE", "KIND", "RESULT", "START", "END", "RESOURCES"], [
            [str(t["version"]), t["kind"], t["result"], t["start"], t["end"] or "",
             _touched(t)] for t in found.updates
        ])
    output.say(f"the same history from Pulumi: {found.command}")


@runs_app.command(name="gc")
def gc_cmd(profile: Profile = None) -> None:
    """Destroy stacks left by finished or crashed runs, clear stale engine locks and
    remove code archives no run uses."""
    from dstack.errors import BackendError
    from dstack.run.context import Context
    from dstack.run.lifecycle import gc

    report = gc(Context.open(profile), output.say)  # gc does what opening would reconcile
    output.say(f"gc: {len(report.locks)} stale lock(s), {len(report.torn_down)} finished "
               f"run(s), {len(report.orphans)} orphan stack(s), {len(report.code)} unused "
               "code archive(s)" + (f", {len(report.elsewhere)} live run(s) of other machines "
                                    "left alone" if report.elsewhere else ""))
    if report.ok:
        return
    what = [f"destroy the stack of {len(report.failed)} run(s): {', '.join(report.failed)}"] \
        if report.failed else []
    what += ["list the stacks"] if report.unlisted else []
    raise BackendError(f"gc could not {' or '.join(what)}",
                       "The messages above say why; `dstack --debug gc` shows the engine's "
                       "full output.")

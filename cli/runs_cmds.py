"""Commands about runs: run, ps, logs, stop, rm, audit, gc."""

from __future__ import annotations

import contextlib
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from dstack.cli import output
from dstack.errors import BackendError, StoreError
from dstack.interrupts import deferred_sigint
from dstack.run.context import Context
from dstack.run.following import follow
from dstack.run.lifecycle import exit_code, gc, reconcile, remove_run, stop
from dstack.run.record import TERMINAL, load_run
from dstack.sizes import format_decimal

FINISHED = {s.value for s in TERMINAL}

Profile = Annotated[str | None, typer.Option("--profile", help="Profile to use.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
Yes = Annotated[bool, typer.Option("-y", "--yes", help="Do not ask for confirmation.")]
ProjectOpt = Annotated[Path | None, typer.Option(
    "--project", "-C", help="Project folder (default: the nearest one from here up with "
                            ".dstack/workflows.yaml, else this one).")]


def open_context(profile: str | None) -> Context:
    """The profile's context, after tearing down whatever finished runs left behind."""
    ctx = Context.open(profile)
    # Housekeeping only: when the store cannot be read, the command itself says so.
    with contextlib.suppress(StoreError):
        reconcile(ctx, output.say)
    return ctx


def project_folder(option: Path | None, *, job_starts_at_root: bool = False) -> Path:
    """The project to work on: `-C` as given, else the nearest folder from the current one up
    with workflow files, else the current folder. A project found above the current folder is
    named; `job_starts_at_root` adds how to start a job here instead of at the project's root."""
    from dstack.run.project import find_project_dir

    if option is not None:
        return option.resolve()
    here = Path.cwd().resolve()
    found = find_project_dir(here)
    if found is None or found == here:
        return here
    message = f"using the project at {found}"
    if job_starts_at_root:
        sub = here.relative_to(found).as_posix()
        message += f"; the job starts at its root (`--working-dir {sub}` starts it here)"
    output.say(message)
    return found


def _ago(ts: str) -> str:
    return datetime.fromisoformat(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _touched(update: dict[str, Any]) -> str:
    """An audited update's resources, or Pulumi's counts when dstack has no record of them."""
    if update["resources"] is None:
        return ", ".join(f"{op} {n}" for op, n in update["pulumi_changes"].items()) + \
            " (Pulumi's count)"
    return ", ".join(f"{c['op']} {c['type'].rsplit(':', 1)[-1]} {c['name']}"
                     for c in update["resources"]) or "none"


def register_run_commands(app: typer.Typer) -> None:
    """Add the run commands to `app`."""

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
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
        from dstack.run.submit import RunOptions, dry_run, plan_run, run_attached, submit

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
        with deferred_sigint() as interrupts:  # from here on, Ctrl-C stops the run
            final = run_attached(ctx, plan, output.write_log, output.say, interrupts)
        output.say(f"{final.name} {final.status.value}"
                   + (f": {final.message}" if final.message else ""))
        return exit_code(final)

    @app.command()
    def ps(
        run_name: Annotated[str | None, typer.Argument(metavar="RUN", help="One run.")] = None,
        all_runs: Annotated[bool, typer.Option("-a", "--all", help="All runs.")] = False,
        all_projects: Annotated[bool, typer.Option(
            "--all-projects", help="Runs of every project, not only this one's.")] = False,
        project: ProjectOpt = None,
        profile: Profile = None,
        json_out: JsonOpt = False,
    ) -> None:
        """List the project's runs: unfinished ones and the 10 most recent (all with -a)."""
        from dstack.run.listing import project_runs, run_docs, run_summary
        from dstack.run.project import project_label, project_of
        from dstack.run.tags import tags_of

        ctx = open_context(profile)
        docs = ([load_run(ctx.store, run_name).model_dump(mode="json")] if run_name
                else run_docs(ctx.store, ctx.listing_cache))
        if not all_projects and not run_name:
            every, here = len(docs), project_of(project_folder(project))
            docs = project_runs(docs, here)
            if not docs and every:
                output.say(f"no runs of this project ({here}); `dstack ps -a --all-projects` "
                           f"lists the {every} run(s) of other projects")
        if not all_runs and not run_name:
            recent = {d["name"] for d in docs[:10]}
            docs = [d for d in docs if d["status"] not in FINISHED or d["name"] in recent]
        tags = tags_of(ctx.store, ctx.listing_cache)
        now = time.time()
        rows = [run_summary(d, tags.get(d["name"], []), now) for d in docs]
        if json_out:
            output.print_json(rows)
            return
        cols = ["RUN", "WORKFLOW", *(["PROJECT"] if all_projects else []), "PROVIDER",
                "STATUS", "SUBMITTED", "DURATION", "BACKEND", "TAGS", "ARTIFACTS"]
        if any(r["apps"] for r in rows):
            cols.append("APPS")
        output.table(cols, [
            [str(r["run"]), str(r["workflow"]),
             *([project_label(r["project"])] if all_projects else []),  # type: ignore[arg-type]
             str(r["provider"]), str(r["status"]),
             _ago(str(r["submitted"])), _duration(r["duration"]),  # type: ignore[arg-type]
             str(r["backend"]), ", ".join(r["tags"]),  # type: ignore[arg-type]
             ", ".join(r["artifacts"]),  # type: ignore[arg-type]
             *([" ".join(r["apps"])] if "APPS" in cols else [])]  # type: ignore[arg-type]
            for r in rows
        ])
        if run_name and rows[0]["message"]:  # one run: why it ended the way it did
            print(f"message: {rows[0]['message']}")

    @app.command()
    def logs(
        run_name: Annotated[str, typer.Argument(metavar="RUN")],
        follow_: Annotated[bool, typer.Option("-f", "--follow", help="Keep following.")] = False,
        profile: Profile = None,
    ) -> int:
        """Print a run's output: the job's stdout to stdout, its stderr and dstack's lines to
        stderr. With -f, follow it to its end and exit with the run's exit code, as `dstack
        run` does."""
        ctx = open_context(profile)
        load_run(ctx.store, run_name)
        final = follow(ctx, run_name, output.write_log,
                       output.say if follow_ else lambda _m: None, until_finished=follow_)
        if not follow_:
            return 0
        if not final.status.finished:
            output.say(f"the runner of {run_name} is gone before the run ended; "
                       f"`dstack ps {run_name}` shows what is known")
            return 1
        output.say(f"{final.name} {final.status.value}"
                   + (f": {final.message}" if final.message else ""))
        return exit_code(final)

    @app.command(name="stop")
    def stop_cmd(
        run_name: Annotated[str, typer.Argument(metavar="RUN")],
        abort: Annotated[bool, typer.Option("--abort", help="Kill the job at once, without "
                                                            "the final artifact sync.")] = False,
        yes: Yes = False,
        profile: Profile = None,
    ) -> None:
        """Stop a run (saving its artifacts) and destroy its stack."""
        ctx = open_context(profile)
        run = load_run(ctx.store, run_name)
        if not run.status.finished:
            output.confirm(f"{'Abort' if abort else 'Stop'} run {run_name}?", yes)
        final = stop(ctx, run_name, abort=abort, say=output.say)
        output.say(f"{run_name} {final.status.value}")

    @app.command()
    def rm(
        run_name: Annotated[str, typer.Argument(metavar="RUN")],
        yes: Yes = False,
        profile: Profile = None,
    ) -> None:
        """Delete a finished run, its logs and artifacts (its stack history stays:
        `dstack audit RUN` still shows it)."""
        from dstack.run.tags import tags_of

        ctx = open_context(profile)
        load_run(ctx.store, run_name)
        output.confirm(f"Delete run {run_name} with its logs and artifacts?", yes)
        remove_run(ctx, run_name, tags_of(ctx.store, ctx.listing_cache).get(run_name, []))
        output.say(f"removed {run_name}")

    @app.command()
    def audit(
        run_name: Annotated[str, typer.Argument(metavar="RUN")],
        profile: Profile = None,
        json_out: JsonOpt = False,
    ) -> None:
        """What the run's stack created and destroyed, and when (from Pulumi's history, also
        for a removed run)."""
        from dstack.run.audit import audit_run

        ctx = open_context(profile)
        audit = audit_run(ctx.store, ctx.backend, run_name)
        if audit.removed:
            output.say(f"the record of run {run_name} was removed (`dstack rm`): only its "
                       "stack's history is shown, with Pulumi's counts (they include the "
                       "stack's own resource)")
        if json_out:
            output.print_json(audit.updates)
        else:
            output.table(["UPDATE", "KIND", "RESULT", "START", "END", "RESOURCES"], [
                [str(t["version"]), t["kind"], t["result"], t["start"], t["end"] or "",
                 _touched(t)] for t in audit.updates
            ])
        output.say(f"the same history from Pulumi: {audit.command}")

    @app.command(name="gc")
    def gc_cmd(profile: Profile = None) -> None:
        """Destroy stacks left by finished or crashed runs, clear stale engine locks and
        remove code archives no run uses."""
        ctx = Context.open(profile)
        result = gc(ctx, output.say)
        output.say(f"gc: {len(result['locks'])} stale lock(s), {len(result['torn_down'])} "
                   f"finished run(s), {len(result['orphans'])} orphan stack(s), "
                   f"{len(result['code'])} unused code archive(s)")
        runs = [r for r in result["failed"] if r != "*"]
        if result["failed"]:
            what = [f"destroy the stack of {len(runs)} run(s): {', '.join(runs)}"] if runs else []
            what += ["list the stacks"] if "*" in result["failed"] else []
            raise BackendError(f"gc could not {' or '.join(what)}",
                               "The messages above say why; `dstack --debug gc` shows the "
                               "engine's full output.")

"""The local backend: no cloud, no credentials, the same runner as in the cloud.

Workspace stack `workspace-<profile>` (long-lived): the store folder. Run stack
`run-<name>` (ephemeral): the run's workspace folder and its runner process, both Python
dynamic resources. Destroying the run stack stops the runner if it still runs.
"""

from __future__ import annotations

import fcntl
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from dstack.config.backends import BackendClass, ResourceChange
from dstack.config.profiles import Profile, store_url
from dstack.errors import UsageError
from dstack.home import private_dir
from dstack.procs import process_alive
from dstack.run.job import Job
from dstack.run.record import RunRecord, run_stack_name
from dstack.runner.bootstrap import render_bootstrap
from dstack.sizes import format_decimal, format_size
from dstack.stacks.machine import docker_engine_available, local_cpus, local_gpus, local_memory
from dstack.stacks.run_stacks import RunStacks
from dstack.store.base import Store
from dstack.store.local import LocalStore


class LocalBackend(RunStacks):
    """Runs jobs as local processes, each inside its own ephemeral Pulumi stack."""

    name = "local"

    def __init__(self, profile: Profile, home: Path) -> None:
        super().__init__(profile, home)
        self.store_root = Path(store_url(profile, home)[len("file://"):])
        self.workdirs = home / "workdirs"

    def store(self) -> Store:
        """The store folder."""
        return LocalStore(self.store_root)

    # -- workspace -------------------------------------------------------------------------

    def _workspace_marker(self) -> Path:
        return self.home / "pulumi" / f"workspace-{self.profile.name}.done"

    def ensure_workspace(self) -> Mapping[str, object]:
        """Bring up the long-lived workspace stack once (it declares the store folder and
        exports nothing, so its outputs are empty).

        Runs started at the same time take turns: the first brings it up, the others wait.
        """
        marker = self._workspace_marker()
        if marker.exists():
            return {}
        private_dir(marker.parent)
        with open(marker.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if marker.exists():
                return {}
            root = str(self.store_root)

            def program() -> None:
                from dstack.stacks.local_resources import Folder

                Folder("store", root, keep=True)

            self.engine.up(self.workspace_stack, program)
            marker.write_text("ok\n")
        return {}

    # -- runs ------------------------------------------------------------------------------

    def check_resources(self, job: Job) -> None:
        """Refuse, before anything is created, a job this machine cannot run."""
        hint = ("Ask for less (`--cpu N`, `--memory SIZE`), or run it with `--profile` naming "
                "a cloud profile (`dstack config add aws|gcp ...`).")
        cpu = job.resources.get("cpu")
        if isinstance(cpu, int) and cpu > local_cpus():
            raise UsageError(f"the job asks for {cpu} CPUs; this machine has {local_cpus()}",
                             hint)
        memory, have = job.resources.get("memory"), local_memory()
        if isinstance(memory, int) and have is not None and memory > have:
            raise UsageError(f"the job asks for {format_decimal(memory, 'GB')} of memory; this "
                             f"machine has {format_decimal(have, 'GB')} ({format_size(have)})",
                             hint)
        gpu = job.resources.get("gpu")
        wanted = int(gpu.get("count", 0)) if isinstance(gpu, dict) else 0
        if wanted:
            gpus = local_gpus()
            if len(gpus) < wanted:
                raise UsageError(
                    f"the job asks for {wanted} GPU(s); this machine has {len(gpus)}"
                    + (f" ({', '.join(gpus)})" if gpus else ""),
                    "Run it with `--gpu 0` to use the CPU, or with `--profile` naming a cloud "
                    "profile (`dstack config add aws|gcp ...`).",
                )
        if job.needs_docker and not docker_engine_available():
            raise UsageError(
                "the docker provider needs a Docker engine, and none answers on this machine",
                "Start Docker (or install Docker Engine), or run on a cloud profile, whose "
                "images have one.",
            )

    def plan_resources(self, job: Job) -> list[dict[str, str]]:
        """What `run-<name>` would declare, for `--dry-run`."""
        return [{"type": "dstack:local:Folder", "name": "workspace",
                 "what": "the run's workspace folder under the dstack home"},
                {"type": "dstack:local:RunnerProcess", "name": "runner",
                 "what": f"the runner process of the {job.provider} job"}]

    def bootstrap(self, run: RunRecord) -> str:
        """The script the runner process starts from."""
        return render_bootstrap(
            python=sys.executable, store_url=self.store().url, run=run.name,
            workdir=str(self.workdirs / run.name / "work"), cache=str(self.cache),
            env={"DSTACK_HOME": str(self.home)},
        )

    def provision(
        self, run: RunRecord, bootstrap: str
    ) -> tuple[list[ResourceChange], dict[str, object]]:
        """Bring up `run-<name>`: the workspace folder, then the runner process in it."""
        self.ensure_workspace()
        private_dir(self.workdirs)
        workdir = str(self.workdirs / run.name)

        def program() -> None:  # pulumi is imported as the engine starts (`engine`)
            import pulumi

            from dstack.stacks.local_resources import Folder, RunnerProcess

            folder = Folder("workspace", workdir)
            runner = RunnerProcess("runner", folder.id, bootstrap, run=run.name,
                                   store_url=self.store().url,
                                   opts=pulumi.ResourceOptions(depends_on=[folder]))
            pulumi.export("pid", runner.pid)
            pulumi.export("start_ticks", runner.start_ticks)

        outputs, changes = self.engine.up(run_stack_name(run.name), program)
        instance = {"host": socket.gethostname(), "pid": outputs.get("pid"),
                    "start_ticks": outputs.get("start_ticks"), "workdir": workdir}
        return changes, instance

    def runner_gone_reason(self, run: RunRecord) -> str | None:
        """Unknown: a local runner leaves no word on why it is gone."""
        return None

    def runner_alive(self, run: RunRecord) -> bool | None:
        """Whether the runner process still runs; None on another host."""
        pid = run.instance.get("pid")
        if not pid or run.instance.get("host") != socket.gethostname():
            return None
        return process_alive(int(pid), run.instance.get("start_ticks"))


_: BackendClass = LocalBackend  # mypy checks it is a `Backend`

"""The boot script of a cloud instance (user-data / startup-script) around the runner.

It holds no secret: it schedules a watchdog power-off after the workflow's maximum duration,
installs the runner's requirements (`dstack.runner.requirements`) and the exact dstack wheel
the CLI uploaded to the workspace bucket (fetched with the instance's own role, checked
against its SHA-256, installed without its dependencies), starts the runner against the
bucket's store, and powers the machine off when the runner exits, whatever its status.
"""

from __future__ import annotations

import math
import shlex

from dstack.run.record import RunRecord
from dstack.runner.bootstrap import render_bootstrap
from dstack.runner.requirements import runner_requirements
from dstack.stacks.instance_spec import app_ports
from dstack.stacks.wheel import Wheel

REMOTE_ROOT = "/opt/dstack"
VENV = f"{REMOTE_ROOT}/venv"
"""The runner's venv on a remote machine (an instance, a pod)."""


def wheel_path(wheel: Wheel) -> str:
    """Where a remote machine's `fetch` lines put the wheel."""
    return f"{REMOTE_ROOT}/{wheel.name}"


def install_wheel(wheel: Wheel, fetch: list[str], store_url: str) -> list[str]:
    """Lines that install into `VENV` the runner's requirements for the store at `store_url`
    (its SDK is what `fetch` uses), fetch the exact wheel to `wheel_path` (`fetch`), check it
    against its SHA-256 and install it without its dependencies: the CLI's and the Pulumi
    side's are no runner's."""
    pip = [f"{VENV}/bin/pip", "install", "-q", "--disable-pip-version-check"]
    return [
        shlex.join([*pip, *runner_requirements(store_url)]),
        *fetch,
        f"echo {shlex.quote(f'{wheel.sha256}  {wheel_path(wheel)}')} | sha256sum -c -",
        shlex.join([*pip, "--no-deps", wheel_path(wheel)]),
    ]


def cloud_preamble(wheel: Wheel, fetch: list[str], max_minutes: int, store_url: str,
                   docker: bool = False) -> list[str]:
    """Lines before the runner starts: watchdog, power-off on exit, one boot only, Docker
    when the job needs it and the image lacks it, a venv with the runner's requirements and
    the exact wheel (`fetch` puts it at `REMOTE_ROOT/<wheel name>`)."""
    venv = VENV
    q = shlex.quote
    apt = "apt-get -o DPkg::Lock::Timeout=300 -q"
    docker_lines = [f"command -v docker >/dev/null 2>&1 || {{ {apt} update && {apt} install -y "
                    "docker.io; }"] if docker else []
    return [
        'export HOME="${HOME:-/root}" DEBIAN_FRONTEND=noninteractive',
        "# Watchdog: power off after the workflow's max_duration even if no CLI is watching.",
        f"shutdown -h +{max_minutes} {q('dstack: max_duration reached')} || true",
        "# Power off when this script, and then the runner it becomes, exits for any reason.",
        "( tail --pid=$$ -f /dev/null; shutdown -h now ) >/dev/null 2>&1 &",
        f"mkdir -p {q(REMOTE_ROOT)}",
        "# A second boot means the first attempt was cut short: never run a job twice.",
        f"if [ -e {q(REMOTE_ROOT + '/booted')} ]; then exit 0; fi",
        f"touch {q(REMOTE_ROOT + '/booted')}",
        f"python3 -m venv {q(venv)} || {{ {apt} update && {apt} install -y python3-venv "
        f"&& python3 -m venv --clear {q(venv)}; }}",
        *docker_lines,
        f"{q(venv + '/bin/pip')} install -q --upgrade pip",
        *install_wheel(wheel, fetch, store_url),
    ]


def cloud_bootstrap(run: RunRecord, *, store_url: str, wheel: Wheel, fetch: list[str],
                    max_duration: int, env: dict[str, str] | None = None) -> str:
    """The whole boot script of a cloud instance for `run` (holds no secret)."""
    ports = app_ports(run.job.ports)
    extra = {"DSTACK_APP_PORTS": ",".join(map(str, ports))} if ports else {}
    return render_bootstrap(
        python=f"{VENV}/bin/python", store_url=store_url, run=run.name,
        workdir=f"{REMOTE_ROOT}/runs/{run.name}", cache=f"{REMOTE_ROOT}/cache",
        host="0.0.0.0",
        preamble=cloud_preamble(wheel, fetch, max(1, math.ceil(max_duration / 60)),
                                store_url, docker=run.job.needs_docker),
        env={**(env or {}), **extra},
    )

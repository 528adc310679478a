"""What a job asks of a cloud instance, in the terms the AWS and GCP programs use: its app
ports, its maximum duration, its root disk.

App ports on a cloud instance are fixed, not free ports: the job's port `i` is
`APP_PORT_BASE + i`, opened to the caller's address only; the bootstrap passes the list to the
runner as `DSTACK_APP_PORTS` (comma-separated, in order).
"""

from __future__ import annotations

import math

from dstack.config.profiles import Profile
from dstack.durations import duration_s
from dstack.errors import UsageError
from dstack.run.job import Job
from dstack.spec.models import Resources

APP_PORT_BASE = 8000
"""The job's port `i` on a cloud instance is `APP_PORT_BASE + i` (8000, 8001, ...)."""
MAX_APP_PORTS = 20
DEFAULT_DISK_GIB = 100
DEFAULT_MAX_DURATION_S = 72 * 3600
GIB = 1024**3


def app_ports(count: int) -> list[int]:
    """The fixed ports a cloud job with `count` ports serves on, in order."""
    if count > MAX_APP_PORTS:
        raise UsageError(f"the job asks for {count} ports; a cloud run opens at most "
                         f"{MAX_APP_PORTS}", "Serve fewer apps from one run.")
    return [APP_PORT_BASE + i for i in range(count)]


def parse_duration(value: object) -> int:
    """Seconds of `72h`, `90m`, `2d`, `3600s` or a bare number of seconds (a minute or more)."""
    seconds = duration_s(value) or 0.0
    if seconds < 60:
        raise UsageError(f"max_duration {value!r} is not a duration of a minute or more",
                         "Write it like 72h, 90m or 2d.")
    return int(seconds)


def format_duration(seconds: int) -> str:
    """`72h`, `90m`, `45s`: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def max_duration_s(job: Job, profile: Profile) -> int:
    """The workflow's `max_duration` (the job's, then the profile's setting), else 72 h."""
    value = getattr(job, "max_duration", None) or profile.settings.get("max_duration")
    return parse_duration(value) if value else DEFAULT_MAX_DURATION_S


def job_resources(job: Job) -> Resources:
    """The job's `resources` as the validated spec model."""
    return Resources.model_validate(job.resources)


def disk_gib(resources: Resources) -> int:
    """The root disk size in GiB: the job's `disk` rounded up, else `DEFAULT_DISK_GIB`."""
    return math.ceil(resources.disk / GIB) if resources.disk else DEFAULT_DISK_GIB

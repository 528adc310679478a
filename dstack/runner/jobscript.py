"""Render a job into the bash script the runner executes (`job.sh`).

Only lines the user wrote as commands (`setup`, `shell`) are shell code; everything else is
quoted with `shlex.quote`, so arguments arrive at the job byte for byte.
"""

from __future__ import annotations

import shlex

from dstack.run.job import Job


def render_job_script(job: Job, workdir: str) -> str:
    """The script: cd to the job's working dir, the setup lines, then the job."""
    lines = [
        "#!/usr/bin/env bash",
        "# Rendered by dstack from the run's job; the runner executes it.",
        "set -eo pipefail",
        "umask 022",
        f"cd {shlex.quote(workdir)}",
    ]
    for line in job.setup:
        lines.append(line)
    lines.append(shlex.join(["set", "--", *job.args]))
    for line in job.shell:
        lines.append(line)
    if job.argv:
        lines.append("exec " + shlex.join(job.argv) + ' "$@"')
    return "\n".join(lines) + "\n"

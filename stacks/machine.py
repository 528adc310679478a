"""What this machine has: CPUs, memory, GPUs and a Docker engine, for the local backend's
checks."""

from __future__ import annotations

import os
import shutil
import subprocess


def local_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_memory() -> int | None:
    """Physical memory in bytes (None where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def local_gpus() -> list[str]:
    """Names of this machine's NVIDIA GPUs (empty without a driver)."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(":", 1)[1].split("(")[0].strip()
            for line in out.splitlines() if line.startswith("GPU ")]


def docker_engine_available() -> bool:
    """Whether a Docker engine answers here (not just the client)."""
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        proc = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"],
                              capture_output=True, text=True, timeout=15,
                              env={**os.environ, "DOCKER_CLI_HINTS": "false"})
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0 and bool(proc.stdout.strip())

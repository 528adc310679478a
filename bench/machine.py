"""What the benchmark ran on: cores, memory, load, kernel and the versions measured."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from dstack.stacks.engine_install import PULUMI_VERSION, engine_bin

ROOT = Path(__file__).resolve().parents[1]


def meminfo_mib() -> dict[str, float]:
    """/proc/meminfo in MiB (MemTotal, MemAvailable, ...); empty where there is none."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) / 1024
    except OSError:
        pass
    return out


def boot_epoch() -> float:
    """The wall-clock time of boot, to 10 ms (from /proc/uptime, not the 1 s `btime`)."""
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return time.time() - uptime


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _engine_version() -> str:
    try:
        out = subprocess.run([str(engine_bin() / "pulumi"), "version"], capture_output=True,
                             text=True, timeout=60, env={**os.environ,
                                                         "PULUMI_SKIP_UPDATE_CHECK": "true"})
        return out.stdout.strip() or out.stderr.strip()[:80]
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable ({exc})"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Machine:
    """The machine and software under test, captured when the benchmark starts."""

    started: datetime
    cores: int
    cpu: str
    mem_total_mib: float
    mem_available_mib: float
    load: tuple[float, float, float]
    kernel: str
    python: str
    versions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def capture(cls) -> Machine:
        """Measure now (the load average first, before the benchmark adds to it)."""
        load = os.getloadavg()
        mem = meminfo_mib()
        return cls(
            started=datetime.now(timezone.utc),
            cores=os.cpu_count() or 0,
            cpu=_cpu_model(),
            mem_total_mib=mem.get("MemTotal", 0.0),
            mem_available_mib=mem.get("MemAvailable", 0.0),
            load=load,
            kernel=f"{platform.system()} {platform.release()}",
            python=sys.version.split()[0],
            versions={
                "dstack": f"{_version('dstack')} (commit {_git_commit()})",
                "pulumi SDK": _version("pulumi"),
                "pulumi engine": f"{_engine_version()} (pinned {PULUMI_VERSION})",
                "boto3": _version("boto3"),
                "moto": _version("moto"),
                "pydantic": _version("pydantic"),
            },
        )

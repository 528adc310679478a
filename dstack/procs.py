"""Processes on this machine: identity (pid plus start time) and sessions.

A pid alone can be reused; a pid with its start time (clock ticks since boot, from
`/proc/<pid>/stat`) names one process for good. Where there is no /proc, only the pid is used.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def proc_stat(pid: int) -> list[str] | None:
    """The fields of `/proc/<pid>/stat` after the command name, from the state (`R`, `S`,
    `Z`...) on: field N of proc(5) is item N - 3. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_start_ticks(pid: int) -> int | None:
    """The start time of process `pid` in clock ticks since boot (Linux), None if gone."""
    fields = proc_stat(pid)
    return None if fields is None else int(fields[19])


def process_alive(pid: int, start_ticks: int | None) -> bool:
    """Whether the process `pid` that started at `start_ticks` still runs (not a zombie)."""
    if Path("/proc").is_dir():
        fields = proc_stat(pid)
        if fields is None:
            return False
        return fields[0] != "Z" and (start_ticks is None or int(fields[19]) == start_ticks)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def session_members(sid: int) -> list[int]:
    """Pids of every process in session `sid` (Linux; empty elsewhere)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(ValueError, IndexError):
            fields = proc_stat(int(entry.name))
            if fields is not None and int(fields[3]) == sid:
                pids.append(int(entry.name))
    return pids


def shell_exit_code(code: int) -> int:
    """A process's exit code as a shell reports it: 128+N when signal N ended it (Python's
    `returncode` says -N)."""
    return 128 - code if code < 0 else code


def signal_name(number: int) -> str:
    """`SIGTERM` for 15; the number itself for a signal Python does not name."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def describe_exit(code: int) -> str:
    """`exit code 1`, or `exit code 143, signal SIGTERM` for a process signal 15 ended."""
    if code >= 0:
        return f"exit code {code}"
    return f"exit code {shell_exit_code(code)}, signal {signal_name(-code)}"

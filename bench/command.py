"""Subprocesses the benchmark measures: each output line stamped as it arrives, wall time
from launch to exit, and peak memory.

Every process starts in a session of its own (so a time-out can kill its whole group) and
is reaped with `os.wait4`, whose `ru_maxrss` is the peak of the process and of the
descendants it waited for. `watch_rss` also polls the process's own `VmHWM` from /proc.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

READ_CHUNK = 1 << 20
"""The most a command's output is read at a time."""


class BenchError(Exception):
    """A benchmark step that could not be measured (a failed command, a time-out)."""


@dataclass
class Line:
    """One output line and the wall-clock time (`time.time()`) it reached the harness."""

    at: float
    text: str


@dataclass
class Completed:
    """A finished process: exit code, launch and exit times, stamped output, peak memory."""

    argv: list[str]
    returncode: int
    started: float
    ended: float
    stdout: list[Line] = field(default_factory=list)
    stderr: list[Line] = field(default_factory=list)
    own_peak_kib: int | None = None
    """The process's own peak RSS (`VmHWM`), as last seen before it exited."""
    tree_peak_kib: int | None = None
    """`ru_maxrss` from `wait4`: the largest peak among it and its waited-for descendants."""

    @property
    def wall(self) -> float:
        """Seconds from launch to exit."""
        return self.ended - self.started

    def out_text(self) -> str:
        """Standard output as one string."""
        return "".join(line.text for line in self.stdout)

    def err_text(self) -> str:
        """Standard error as one string."""
        return "".join(line.text for line in self.stderr)

    def first(self, stream: str, pred: Callable[[str], bool]) -> Line | None:
        """The first line of `stream` (`stdout` or `stderr`) for which `pred` holds."""
        lines: list[Line] = getattr(self, stream)
        return next((ln for ln in lines if pred(ln.text)), None)

    def check(self, what: str) -> Completed:
        """Self, or BenchError naming the exit code and the end of stderr."""
        if self.returncode != 0:
            tail = self.err_text()[-1500:].strip()
            raise BenchError(f"{what} exited with {self.returncode}: {tail}")
        return self


def vm_hwm_kib(pid: int) -> int | None:
    """The peak resident set size of process `pid` in KiB (None when unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class Command:
    """A launched process whose output lines are stamped as they arrive."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str],
                 watch_rss: bool = False) -> None:
        self.argv = argv
        self.started = time.time()
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self._chunks: tuple[list[tuple[float, bytes]], ...] = ([], [])
        self.ended: float | None = None
        self.status: int | None = None
        self.tree_peak_kib: int | None = None
        self.own_peak_kib: int | None = None
        self._done = threading.Event()
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._readers = [self._thread(self._read, self.proc.stdout, self._chunks[0]),
                         self._thread(self._read, self.proc.stderr, self._chunks[1])]
        self._waiter = self._thread(self._wait)
        if watch_rss:
            self._thread(self._watch_rss)

    @staticmethod
    def _thread(target: Callable[..., None], *args: object) -> threading.Thread:
        t = threading.Thread(target=target, args=args, daemon=True)
        t.start()
        return t

    @staticmethod
    def _read(pipe: IO[bytes], into: list[tuple[float, bytes]]) -> None:
        """Each chunk the pipe holds (up to 1 MiB), stamped with when its read returned, as a
        terminal or a pipe into `jq` would take it. Nothing more is done while the command
        runs: splitting 200,000 lines of a 4 MB `--json` listing into stamped lines here
        (Python, in this process) kept the listing waiting on a full pipe for 0.2 s."""
        fd = pipe.fileno()
        while chunk := os.read(fd, READ_CHUNK):
            into.append((time.time(), chunk))
        pipe.close()

    def _wait(self) -> None:
        _pid, status, usage = os.wait4(self.proc.pid, 0)
        self.ended = time.time()
        self.status = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.status  # so Popen never waits for it again
        self.tree_peak_kib = int(usage.ru_maxrss)
        self._done.set()

    def _watch_rss(self) -> None:
        while not self._done.is_set():
            seen = vm_hwm_kib(self.proc.pid)
            if seen is not None and not self._done.is_set():
                self.own_peak_kib = max(self.own_peak_kib or 0, seen)
            self._done.wait(0.05)

    def kill(self) -> None:
        """SIGKILL the process's whole group (its session)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> Completed:
        """Wait for the exit (killing the group after `timeout` s) and collect the output."""
        if not self._done.wait(timeout):
            self.kill()
            self._done.wait(10)
            for t in self._readers:
                t.join(5)
            tail = "".join(ln.text for ln in _lines(self._chunks[1]))[-800:]
            raise BenchError(f"{' '.join(self.argv[:4])} timed out after {timeout:.0f}s; "
                             f"stderr: {tail}")
        for t in self._readers:
            t.join(30)
        assert self.ended is not None and self.status is not None
        return Completed(self.argv, self.status, self.started, self.ended,
                         _lines(self._chunks[0]), _lines(self._chunks[1]), self.own_peak_kib,
                         self.tree_peak_kib)


def _lines(chunks: list[tuple[float, bytes]]) -> list[Line]:
    """The lines of stamped chunks, each stamped with the read that completed it."""
    out: list[Line] = []
    tail = b""
    for at, chunk in chunks:
        *lines, tail = (tail + chunk).split(b"\n")
        out.extend(Line(at, raw.decode(errors="replace") + "\n") for raw in lines)
    if tail:
        out.append(Line(chunks[-1][0], tail.decode(errors="replace")))
    return out


def run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300.0,
        watch_rss: bool = False) -> Completed:
    """Run `argv` to its end (see `Command`)."""
    return Command(argv, cwd, env, watch_rss).wait(timeout)

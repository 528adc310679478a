"""The `pulumi` engine, run so that the death of the dstack process never kills it.

An engine whose stdout and stderr are pipes to dstack dies of SIGPIPE on its next write once
dstack is killed (Go programs die of SIGPIPE on stdout and stderr whatever its disposition),
in the middle of saving a checkpoint, and leaves the stack unreadable. Here the engine writes
to files in a folder of the dstack home that dstack follows, runs in a session of its own (a
Ctrl-C for dstack does not reach it mid-update), and reads nothing. It imports no pulumi.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

OutputFn = Callable[[str], None]


@dataclass(frozen=True)
class Finished:
    """How an engine command ended: its exit code and its output, line by line."""

    code: int
    stdout: str
    stderr: str


def scratch_path(folder: Path, suffix: str) -> Path:
    """A file name in `folder` no other command of any process uses."""
    return folder / f"{os.getpid()}-{threading.get_ident()}-{time.time_ns()}{suffix}"


def run_detached(argv: list[str], *, cwd: Path, env: Mapping[str, str], output_dir: Path,
                 on_output: OutputFn | None = None) -> Finished:
    """Run `argv` in a session of its own with no stdin, its stdout and stderr going to files
    in `output_dir` that are followed (each stdout line to `on_output`) and then removed."""
    stem = scratch_path(output_dir, "")
    out, err = stem.with_suffix(".out"), stem.with_suffix(".err")
    done = threading.Event()
    stdout: list[str] = []
    stderr: list[str] = []
    try:
        with out.open("wb") as out_f, err.open("wb") as err_f:
            proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                    stdout=out_f, stderr=err_f, start_new_session=True)
        followers = [threading.Thread(target=_follow, args=(path, done, cb, lines))
                     for path, cb, lines in ((out, on_output, stdout), (err, None, stderr))]
        for t in followers:
            t.start()
        try:
            code = proc.wait()
        finally:
            done.set()
            for t in followers:
                t.join()
    finally:
        out.unlink(missing_ok=True)
        err.unlink(missing_ok=True)
    return Finished(code=code, stdout="\n".join(stdout), stderr="\n".join(stderr))


def sweep(folder: Path, max_age_s: float = 86400.0) -> None:
    """Remove the files of dstack processes that were killed a day ago or more."""
    cutoff = time.time() - max_age_s
    for path in folder.iterdir():
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


def _follow(path: Path, done: threading.Event, callback: OutputFn | None,
            lines: list[str], poll_s: float = 0.02) -> None:
    """Read the lines of a file another process writes, until `done` and its end."""
    tail = ""
    with path.open(encoding="utf-8", errors="replace") as f:
        while True:
            finished = done.is_set()
            data = f.read()
            if data:
                *complete, tail = (tail + data).split("\n")
                for line in complete:
                    _emit(line, callback, lines)
            elif finished:
                break
            else:
                time.sleep(poll_s)
    if tail:
        _emit(tail, callback, lines)


def _emit(line: str, callback: OutputFn | None, lines: list[str]) -> None:
    line = line.rstrip()
    if callback:
        callback(line)
    lines.append(line)

"""This machine's processes from /proc (`dstack.procs`): one parser of `/proc/<pid>/stat`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from dstack.procs import proc_stat, process_alive, process_start_ticks, session_members


def test_a_live_process_is_known_by_its_pid_and_start() -> None:
    me = os.getpid()
    fields = proc_stat(me)
    assert fields is not None and fields[0] in "RS"
    ticks = process_start_ticks(me)
    assert ticks is not None and int(fields[19]) == ticks
    assert process_alive(me, ticks) and process_alive(me, None)
    assert not process_alive(me, ticks + 1)  # the same pid, another process
    assert me in session_members(os.getsid(me))


def test_a_gone_process_and_a_zombie_are_not_alive() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while (proc_stat(child.pid) or ["Z"])[0] != "Z" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc_stat(child.pid) is not None  # not reaped yet: a zombie
    assert not process_alive(child.pid, None)
    child.wait()
    assert proc_stat(child.pid) is None and process_start_ticks(child.pid) is None
    assert not process_alive(child.pid, None)

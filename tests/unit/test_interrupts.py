"""Ctrl-C deferral (`dstack.interrupts.deferred_sigint`), with real SIGINTs.

Each case runs in a fresh interpreter started as from a terminal, with SIGINT at its default
disposition. A command started in the background by a non-interactive shell (`cmd &`, as a
CI script may start the suite) inherits SIGINT ignored; Python then installs no handler, and
a case that expects Ctrl-C to raise would test the shell, not dstack.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

PRELUDE = '''
import json, os, signal, sys, time
from dstack.interrupts import deferred_sigint

def ctrl_c(seen=lambda: False, timeout_s=5.0):
    """SIGINT to this process; return once `seen()` says its handler ran (or it raised)."""
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while not seen() and time.monotonic() < deadline:
        time.sleep(0.005)
'''


TRAMPOLINE = ("import os, signal, sys\n"
              "signal.signal(signal.SIGINT, getattr(signal, sys.argv[1]))\n"
              "os.execv(sys.executable, [sys.executable, '-c', sys.argv[2]])\n")
"""Sets SIGINT's disposition, which `exec` keeps, then becomes the case's interpreter. A
`preexec_fn` would do it in a forked copy of the test process, whose gRPC threads (tests that
serve a program to the engine in-process ran before) once aborted that child (SIGABRT,
"epoll_wait error: Bad file descriptor")."""


def run_case(body: str, sigint: signal.Handlers = signal.SIG_DFL,
             ) -> subprocess.CompletedProcess[str]:
    """Run `body` after the prelude in a fresh interpreter that starts with `sigint` as the
    disposition of SIGINT."""
    return subprocess.run([sys.executable, "-c", TRAMPOLINE, sigint.name,
                           PRELUDE + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=60)


def test_a_ctrl_c_in_a_nested_block_counts_in_the_outer_one_too() -> None:
    done = run_case('''
        notes, counts = [], []
        with deferred_sigint() as outer:
            with deferred_sigint(notes.append, "one moment") as inner:
                ctrl_c(lambda: inner.count > 0)
            counts.append([inner.count, outer.count])
            ctrl_c(lambda: outer.count > 1)  # after the inner block: the outer one only
            counts.append([inner.count, outer.count])
        print(json.dumps({"notes": notes, "counts": counts}))
    ''')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"notes": ["one moment"], "counts": [[1, 1], [1, 2]]}


def test_the_previous_handler_is_back_after_the_block() -> None:
    done = run_case('''
        before = signal.getsignal(signal.SIGINT)
        with deferred_sigint():
            assert signal.getsignal(signal.SIGINT) is not before
        assert signal.getsignal(signal.SIGINT) is before
        try:
            ctrl_c()  # Python's own handler again, not chained to the deferral's
        except KeyboardInterrupt:
            print("raised")
        else:
            print("not raised")
    ''')
    assert (done.returncode, done.stdout.strip()) == (0, "raised"), done.stderr


def test_without_a_block_a_ctrl_c_still_ends_the_process() -> None:
    done = run_case('''
        with deferred_sigint():
            pass
        ctrl_c()
        print("survived")
    ''')
    assert done.returncode == -signal.SIGINT, (done.returncode, done.stdout, done.stderr)
    assert "survived" not in done.stdout


def test_a_ctrl_c_ignored_before_the_block_stays_ignored_in_and_after_it() -> None:
    # As in `dstack run ... &` from a script: the shell asked for Ctrl-C to be ignored.
    done = run_case('''
        with deferred_sigint() as got:
            print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
            ctrl_c(timeout_s=0.2)
        print(got.count, signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
        ctrl_c(timeout_s=0.2)
        print("survived")
    ''', sigint=signal.SIG_IGN)
    assert (done.returncode, done.stdout.split()) == (0, ["True", "0", "True", "survived"]), \
        done.stderr

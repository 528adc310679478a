"""Ctrl-C deferral (`dstack.interrupts.deferred_sigint`), with real SIGINTs to this process."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest

from dstack.interrupts import deferred_sigint


def ctrl_c(seen: Callable[[], bool] = lambda: False, timeout_s: float = 5.0) -> None:
    """SIGINT to this process; return once `seen()` says its handler ran (or it raised).

    Python runs the handler in the main thread at a later check between bytecodes, and
    when another thread (one an earlier test left) took the signal, that check can come
    after a fixed sleep has ended: so this waits for the effect, with a deadline.
    """
    os.kill(os.getpid(), signal.SIGINT)
    deadline = time.monotonic() + timeout_s
    while not seen() and time.monotonic() < deadline:
        time.sleep(0.005)


def test_a_ctrl_c_in_a_nested_block_counts_in_the_outer_one_too() -> None:
    notes: list[str] = []
    with deferred_sigint() as outer:
        with deferred_sigint(notes.append, "one moment") as inner:
            ctrl_c(lambda: inner.count > 0)
        assert (inner.count, outer.count) == (1, 1)
        assert notes == ["one moment"]
        ctrl_c(lambda: outer.count > 1)  # after the inner block: the outer one only
        assert (inner.count, outer.count) == (1, 2)
    assert notes == ["one moment"]


def test_the_previous_handler_is_back_after_the_block() -> None:
    before = signal.getsignal(signal.SIGINT)
    with deferred_sigint():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):  # Python's own handler again, not chained to
        ctrl_c()

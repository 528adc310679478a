"""Ctrl-C deferral (`dstack.interrupts.deferred_sigint`), with real SIGINTs to this process."""

from __future__ import annotations

import os
import signal
import time

import pytest

from dstack.interrupts import deferred_sigint


def ctrl_c() -> None:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.05)  # the handler runs in the main thread between bytecodes


def test_a_ctrl_c_in_a_nested_block_counts_in_the_outer_one_too() -> None:
    notes: list[str] = []
    with deferred_sigint() as outer:
        with deferred_sigint(notes.append, "one moment") as inner:
            ctrl_c()
        assert (inner.count, outer.count) == (1, 1)
        assert notes == ["one moment"]
        ctrl_c()  # after the inner block: the outer one only
        assert (inner.count, outer.count) == (1, 2)
    assert notes == ["one moment"]


def test_the_previous_handler_is_back_after_the_block() -> None:
    before = signal.getsignal(signal.SIGINT)
    with deferred_sigint():
        assert signal.getsignal(signal.SIGINT) is not before
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt):  # Python's own handler again, not chained to
        ctrl_c()

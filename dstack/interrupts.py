"""Deferring Ctrl-C while dstack changes infrastructure, so no update is cut in half."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


@dataclass
class Deferred:
    """How many Ctrl-C arrived while the block ran."""

    count: int = 0


_CHAINED = "_dstack_deferred"


@contextmanager
def deferred_sigint(note: Callable[[str], None] | None = None,
                    message: str = "") -> Iterator[Deferred]:
    """Run the block with SIGINT recorded instead of raised (main thread only).

    Nested inside another deferral, a Ctrl-C counts in both: the outer block still knows
    that one came (a second Ctrl-C after one during provisioning is a second, not a first).
    Where SIGINT is ignored (as the shell sets it for a background command), it stays so.
    """
    got = Deferred()
    previous = signal.getsignal(signal.SIGINT) \
        if threading.current_thread() is threading.main_thread() else None
    if previous is None or previous is signal.SIG_IGN:
        # Not the main thread (only it can set handlers), or Ctrl-C is ignored: a command
        # a script started in the background (`dstack run ... &`) keeps it ignored.
        yield got
        return

    def handler(sig: int, frame: FrameType | None) -> None:
        got.count += 1
        if note and message:
            note(message)
        if getattr(previous, _CHAINED, False):
            previous(sig, frame)  # type: ignore[operator]  # a handler of ours: callable

    setattr(handler, _CHAINED, True)
    signal.signal(signal.SIGINT, handler)
    try:
        yield got
    finally:
        signal.signal(signal.SIGINT, previous)

"""Where lines start when a run's output meets dstack's lines (`dstack.lines`)."""

from __future__ import annotations

from dstack.lines import DSTACK, LineKeeper

TTY = (0, 1)
FILE = (0, 2)


def _show(keeper: LineKeeper, writes: list[tuple[str, bytes]], target: tuple[int, int] = TTY
          ) -> bytes:
    return b"".join(keeper.write(target, writer, data) for writer, data in writes)


def test_a_dstack_line_after_a_partial_line_starts_on_a_new_line() -> None:
    shown = _show(LineKeeper(), [("out", b"hi"), (DSTACK, b"[dstack] x is running\n"),
                                 ("out", b" there\n")])
    assert shown == b"hi\n[dstack] x is running\n there\n"


def test_the_newline_the_job_owed_is_not_written_twice() -> None:
    # print("a") can arrive as "a" then "\n": dstack ended the line already.
    shown = _show(LineKeeper(), [("out", b"out line 1"), (DSTACK, b"[dstack] running\n"),
                                 ("out", b"\nout line 2\n")])
    assert shown == b"out line 1\n[dstack] running\nout line 2\n"


def test_the_jobs_other_stream_does_not_continue_a_partial_line() -> None:
    shown = _show(LineKeeper(), [("out", b"no newline at the end"), ("err", b"err line\n"),
                                 (DSTACK, b"[dstack] run done\n")])
    assert shown == b"no newline at the end\nerr line\n[dstack] run done\n"


def test_one_stream_continues_its_own_line() -> None:
    shown = _show(LineKeeper(), [("err", b"\r 10%"), ("err", b"\r 50%"), ("err", b"\r100%\n")])
    assert shown == b"\r 10%\r 50%\r100%\n"


def test_targets_are_kept_apart() -> None:
    # stdout into a file, stderr on a terminal: the file holds the job's stdout as it is.
    keeper = LineKeeper()
    assert keeper.write(FILE, "out", b"partial") == b"partial"
    assert keeper.write(TTY, DSTACK, b"[dstack] done\n") == b"[dstack] done\n"
    assert keeper.write(FILE, "out", b"\nrest") == b"\nrest"


def test_a_line_ended_twice_drops_one_newline_only() -> None:
    shown = _show(LineKeeper(), [("out", b"a"), (DSTACK, b"[dstack] m\n"), ("err", b"e\n"),
                                 ("out", b"\n\nb\n")])
    assert shown == b"a\n[dstack] m\ne\n\nb\n"

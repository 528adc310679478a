"""Where lines start when a run's output meets dstack's own lines on one terminal or file.

The job's stdout and stderr arrive through two pipes, so their relative order is close but
not exact, and dstack's lines come between them (the runner's in the log, the CLI's status
lines). On one target (a terminal, a file that both stdout and stderr go to, the runner's
`job.log`) a line left open by one writer is ended before another writer starts: a
`[dstack]` line, or the job's other stream. The newline the job was about to write next is
then the one already written, and is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Target = tuple[int, int]
"""What a stream writes to: (device, inode) of its file."""

DSTACK = "dstack"
"""The writer name of dstack's own lines."""


@dataclass
class _Line:
    open_by: str | None = None
    """The writer that left the current line open (None: at a line start)."""
    ended_for: str | None = None
    """The writer whose open line another writer ended; its next leading newline is dropped."""


@dataclass
class LineKeeper:
    """Tracks, per target, who left a line open; says what to write so that lines stay whole."""

    _lines: dict[Target, _Line] = field(default_factory=dict)

    def write(self, target: Target, writer: str, data: bytes) -> bytes:
        """The bytes to write for `writer`'s `data` on `target` (a newline first when another
        writer left the line open; without the newline dstack already wrote for it)."""
        line = self._lines.setdefault(target, _Line())
        out = b""
        if line.open_by is not None and line.open_by != writer:
            out = b"\n"
            line.ended_for = line.open_by
        if line.ended_for == writer:
            line.ended_for = None
            if data.startswith(b"\n"):
                data = data[1:]
        out += data
        if out:
            line.open_by = None if out.endswith(b"\n") else writer
        return out

"""What a dstack command spends importing: `python -X importtime`, summed by package.

Each module's own time (not the cumulative one, so nothing counts twice) is added to the
package group it belongs to (`GROUPS`, by its top-level name), and to the total of all.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterable

from bench.command import BenchError, run
from bench.homes import BenchHome

GROUPS = {"dstack": "dstack", "typer": "typer", "pydantic": "pydantic",
          "pydantic_core": "pydantic", "rich": "rich"}
"""Top-level module → the group its import time counts for."""
COLUMNS = ("dstack", "typer", "pydantic", "rich", "all")
CODE = "from dstack.cli.app import main; main()"


def import_ms(stderr: Iterable[str]) -> dict[str, float]:
    """Milliseconds of imports per group of `COLUMNS`, from `-X importtime` lines."""
    out = dict.fromkeys(COLUMNS, 0.0)
    for line in stderr:
        if not line.startswith("import time:"):
            continue
        fields = line[len("import time:"):].split("|")
        if len(fields) != 3 or not fields[0].strip().isdigit():
            continue  # the header line
        ms = int(fields[0]) / 1000
        group = GROUPS.get(fields[2].strip().split(".")[0])
        if group:
            out[group] += ms
        out["all"] += ms
    return out


def command_imports(h: BenchHome, args: tuple[str, ...], repeat: int) -> dict[str, float]:
    """The median import times of `dstack ARGS` in the home, over `repeat` runs."""
    runs = []
    for _ in range(repeat):
        done = run([sys.executable, "-X", "importtime", "-c", CODE, *args], h.project, h.env())
        if done.returncode != 0:
            raise BenchError(f"dstack {' '.join(args)} failed: {done.err_text()[-300:]}")
        runs.append(import_ms(done.err_text().splitlines()))
    return {c: statistics.median(r[c] for r in runs) for c in COLUMNS}

"""The markdown report (`bench/RESULTS.md`) and the short summary printed at the end."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from bench.config import Config
from bench.machine import Machine, meminfo_mib
from bench.stats import Section, md_table, summary_row

HEADERS = ["measurement", "median", "min", "max", "n", "target", "result"]
SETUP = Path(__file__).with_name("SETUP.md")
"""The set-up times of the README's commands (`bench/setup_times.sh`, about 25 min: not part
of `make bench`), copied into every report."""

LOAD_NOTE = """\
## What depends on load

Every wall-clock number above moves with the machine's load (the load average at the start
of each section is shown): the overhead and its phases, the first-output time, the engine's
costs, the listing commands and the concurrent runs are CPU-bound Python and Go start-up
work, and on a {cores}-core machine shared with test suites they can double. Freshness depends on
load through the runner's 0.2 s tick and 0.5 s sync period slipping. The throughput
*ratios* are paired pass by pass, so load cancels out to a large degree; the absolute MiB/s
do not. Memory figures (peak RSS) and counts (runs done, files in the store) do not depend
on load. For stable numbers, run on an idle machine, or raise `--repeat`.
"""


def _load(load: tuple[float, float, float] | None) -> str:
    return "n/a" if load is None else " / ".join(f"{x:.2f}" for x in load)


def render(machine: Machine, cfg: Config, sections: list[Section], wall_s: float,
           interrupted: bool = False) -> str:
    """The whole report."""
    mode = "quick (smoke: 1 repetition, smaller mix, fewer concurrent runs)" if cfg.quick \
        else f"full, {cfg.repeat} repetitions"
    out = [
        "# dstack benchmark results",
        "",
        "Written by `python -m bench` (`make bench`); every number is measured, nothing is "
        "asserted. Medians over repetitions, with min and max; a target is judged on the "
        "median unless it says otherwise.",
        "",
        f"- Date: {machine.started.strftime('%Y-%m-%d %H:%M:%S UTC')}; run took "
        f"{wall_s / 60:.1f} min; mode: {mode}" + (" — **interrupted**" if interrupted else ""),
        f"- Machine: {machine.cores} cores ({machine.cpu}), {machine.mem_total_mib / 1024:.1f} "
        f"GiB memory ({machine.mem_available_mib / 1024:.1f} GiB available at start), "
        f"{machine.kernel}, Python {machine.python}",
        f"- Load average at start (1 / 5 / 15 min): {_load(machine.load)}",
        "- Versions: " + "; ".join(f"{k} {v}" for k, v in machine.versions.items()),
        "",
    ]
    if cfg.quick:
        out += ["> **Smoke run** (`--quick`): checks that the harness works; the numbers are "
                "not representative.", ""]
    rows = [summary_row(m) for s in sections for m in s.metrics if m.target is not None]
    if rows:
        out += ["## Targets", "", "Every measurement with a target; the sections below have "
                "all the measurements and how the time splits.", "", md_table(HEADERS, rows),
                ""]
    for s in sections:
        out += [f"## {s.title}", "",
                f"Load average at start {_load(s.load_start)}, at end {_load(s.load_end)}; "
                f"took {s.seconds:.0f} s.", ""]
        if s.error:
            out += ["**The scenario failed:**", "", "```", s.error.strip(), "```", ""]
        if s.metrics:
            out += [md_table(HEADERS, [summary_row(m) for m in s.metrics]), ""]
        for block in s.details:
            out += [block, ""]
        for note in s.notes:
            out += [f"- {note}"]
        if s.notes:
            out.append("")
    if SETUP.exists():
        out += [SETUP.read_text().strip(), ""]
    out += [LOAD_NOTE.format(cores=machine.cores)]
    return "\n".join(out)


def console_summary(sections: list[Section]) -> str:
    """A plain-text digest for the terminal."""
    lines = []
    for s in sections:
        lines.append(f"== {s.title}" + (f"  [FAILED: {s.error.strip().splitlines()[-1]}]"
                                        if s.error else ""))
        for m in s.metrics:
            name, med, lo, hi, n, target, result = summary_row(m)
            lines.append(f"  {name:<78} {med:>12}  [{lo} .. {hi}] n={n}  {target} {result}")
    lines.append(f"load average now: {_load(os.getloadavg())}; memory available: "
                 f"{meminfo_mib().get('MemAvailable', 0) / 1024:.1f} GiB; "
                 f"{datetime.now(timezone.utc).strftime('%H:%M:%S UTC')}")
    return "\n".join(lines)

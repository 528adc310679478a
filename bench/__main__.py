"""`python -m bench [--quick] [--only overhead,artifacts,scale] [--repeat N]`.

Runs the selected scenarios one after another, each in its own temp dstack home that is
cleaned up afterwards, and writes the report (`bench/RESULTS.md` unless `--output`). A
scenario that fails is reported as failed and the others still run. SIGTERM and Ctrl-C
stop the run, clean up (servers, processes, temp dirs) and write what was measured.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from bench.config import SCENARIOS, Config
from bench.homes import log
from bench.machine import Machine
from bench.report import console_summary, render
from bench.stats import Section

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "RESULTS.md"


def _scenario(key: str) -> Callable[[Config], Section]:
    """The `measure` function of a scenario (imported lazily: each pays for its imports)."""
    if key == "overhead":
        from bench import overhead
        return overhead.measure
    if key == "artifacts":
        from bench import artifacts
        return artifacts.measure
    from bench import scale
    return scale.measure


def parse_args(argv: list[str] | None) -> tuple[Config, list[str], Path]:
    """The settings, the scenarios to run and where to write the report."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure how fast dstack starts a job, moves artifacts, and scales.")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 repetition, smaller artifact mix, 5 concurrent runs")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios among {', '.join(SCENARIOS)}")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions of each timed step (default 5; 1 with --quick)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help="where to write the markdown report")
    parser.add_argument("--tmp", type=Path, default=None,
                        help="folder for temp dirs (default: the system's temp folder)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp dstack homes for inspection")
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown or not only:
        parser.error(f"unknown scenario(s) {', '.join(unknown) or '(none)'}; "
                     f"choose among {', '.join(SCENARIOS)}")
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 5)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    cfg = Config(quick=args.quick, repeat=repeat, base=args.tmp, keep=args.keep)
    return cfg, [s for s in SCENARIOS if s in only], args.output


def _on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when every scenario produced its measurements."""
    cfg, keys, output = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    machine = Machine.capture()
    log(f"{machine.cores} cores, load {os.getloadavg()[0]:.2f}; scenarios: {', '.join(keys)}; "
        f"{'quick' if cfg.quick else 'full'}, {cfg.repeat} repetition(s)")
    started = time.monotonic()
    sections: list[Section] = []
    interrupted = False
    try:
        for key in keys:
            t0 = time.monotonic()
            load = os.getloadavg()
            try:
                sec = _scenario(key)(cfg)
            except KeyboardInterrupt:
                interrupted = True
                sections.append(Section(key, key, error="interrupted", load_start=load))
                break
            except Exception:
                sec = Section(key, key, error=traceback.format_exc()[-3000:], load_start=load)
                log(f"{key} failed:\n{sec.error}")
            sec.load_start, sec.load_end = load, os.getloadavg()
            sec.seconds = time.monotonic() - t0
            sections.append(sec)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(render(machine, cfg, sections, time.monotonic() - started,
                                 interrupted))
    print(console_summary(sections))
    print(f"report: {output}")
    if interrupted:
        return 130
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    sys.exit(main())

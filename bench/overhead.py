"""Scenario 1: what `dstack run` adds to a job that does nothing, phase by phase.

The real CLI runs `python noop.py` attached; the same `python noop.py` run directly is the
baseline. The phases come from what the run leaves behind, without touching product code:
the CLI's stderr lines (stamped as they arrive), the run's record (`submitted_at`,
`started_at`, `finished_at`, and each version of `run.json` as a watcher sees it change,
stamped with the file's mtime), the runner's start time (`instance.start_ticks`, clock ticks
since boot), `runs/<run>/stack.json` (when dstack recorded the end of `up` and `destroy`),
the log chunks' mtimes and the stack's Pulumi history (`dstack audit --json`, 1 s steps).
The engine's own cost is measured alone: `pulumi version`, and `Engine.up`/`destroy` of a
stack holding one dynamic Folder.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.command import BenchError, Completed, run
from bench.config import Config
from bench.homes import BenchHome, log
from bench.machine import boot_epoch
from bench.stats import Section, Target, fmt

RUN_TIMEOUT = 300.0
OVERHEAD_TARGET_S = 2.0
FIRST_OUTPUT_TARGET_S = 1.0
"""The second speed issue's target (the first one asked for 1.5 s)."""

WORKFLOWS = """
workflows:
  - name: noop
    provider: python
    file: noop.py
  - name: hello
    provider: python
    file: hello.py
"""
FILES = {
    "noop.py": "# does nothing\n",
    "hello.py": """
        import time
        print(f"first-line {time.time():.6f}", flush=True)
        time.sleep(1.0)
    """,
}

PHASES = (
    "CLI start, spec and deps",
    "packaging",
    "stack up, until the runner is spawned",
    "runner start (to status running)",
    "job: code, Python env, the job, its end noticed",
    "final sync and status",
    "stack destroy (incl. noticing the end)",
    "CLI exit",
)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class RunWatcher:
    """Finds the next run that appears in a store folder and records every version of its
    `run.json` as (file mtime, document)."""

    def __init__(self, store: Path, known: set[str], every_s: float = 0.005) -> None:
        self.runs = store / "runs"
        self.known = set(known)
        self.every_s = every_s
        self.name: str | None = None
        self.versions: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RunWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _loop(self) -> None:
        last: tuple[int, int, int] | None = None
        while not self._stop.wait(self.every_s):
            if self.name is None:
                try:
                    new = [e.name for e in os.scandir(self.runs) if e.name not in self.known]
                except OSError:
                    continue
                if not new:
                    continue
                self.name = new[0]
            path = self.runs / self.name / "run.json"
            try:
                st = path.stat()
                key = (st.st_mtime_ns, st.st_ino, st.st_size)
                if key == last:
                    continue
                doc = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            last = key
            self.versions.append((st.st_mtime, doc))

    def first_with(self, status: str) -> float | None:
        """When the record first had `status` (its file's mtime), if the watcher saw it."""
        return next((t for t, doc in self.versions if doc.get("status") == status), None)


def _run_name(done: Completed) -> str:
    line = done.first("stderr", lambda t: " submitted" in t)
    found = re.search(r"run (\S+) submitted", line.text) if line else None
    if not found:
        raise BenchError(f"no run name in the CLI's stderr: {done.err_text()[-500:]}")
    return found.group(1)


def _stack_times(h: BenchHome, run_name: str) -> dict[str, float]:
    """When dstack recorded the end of the stack's `up` and `destroy` (stack.json)."""
    doc = json.loads((h.store / "runs" / run_name / "stack.json").read_text())
    out: dict[str, float] = {}
    for update in doc.get("updates", []):
        out.setdefault(update["kind"], _ts(update["at"]))
    return out


def _audit_durations(h: BenchHome, run_name: str) -> dict[str, float]:
    """Duration of each update in the stack's Pulumi history (its steps are whole seconds)."""
    trail = json.loads(h.dstack("audit", run_name, "--json", timeout=120).out_text())
    out: dict[str, float] = {}
    for item in trail:
        if item.get("end"):
            out[item["kind"]] = (datetime.fromisoformat(item["end"]) -
                                 datetime.fromisoformat(item["start"])).total_seconds()
    return out


def noop_phases(done: Completed, watcher: RunWatcher, run_doc: dict[str, Any],
                stack: dict[str, float], packaging_s: float, boot: float) -> dict[str, float]:
    """The attached run's wall time split into `PHASES` (they add up to the total), plus
    `engine up, whole update` and `CLI waited for up after the job`, which overlap them."""
    packaged = done.first("stderr", lambda t: "packaged" in t)
    provisioning = done.first("stderr", lambda t: "provisioning stack" in t)
    if packaged is None or provisioning is None:
        raise BenchError(f"unexpected CLI output: {done.err_text()[-500:]}")
    ticks = run_doc.get("instance", {}).get("start_ticks")
    started, finished = _ts(run_doc["started_at"]), _ts(run_doc["finished_at"])
    spawned = boot + ticks / CLK_TCK if ticks else started
    uploading = watcher.first_with("uploading") or finished
    marks = [packaged.at - packaging_s, packaged.at, spawned, started, uploading, finished,
             stack.get("destroy", done.ended), done.ended]
    out: dict[str, float] = {}
    at = done.started
    for name, mark in zip(PHASES, marks, strict=True):
        nxt = max(at, mark)
        out[name] = nxt - at
        at = nxt
    up_end = stack.get("up", provisioning.at)
    out["engine up, whole update (overlaps the runner and job)"] = up_end - provisioning.at
    out["CLI waited for `up` after the job had finished"] = max(0.0, up_end - finished)
    return out


def _first_output(h: BenchHome, done: Completed) -> dict[str, float]:
    """Time to the job's first line on the CLI's stdout, and where that time went."""
    line = done.first("stdout", lambda t: t.startswith("first-line"))
    if line is None:
        raise BenchError(f"the job's first line never reached stdout: {done.out_text()[:500]}")
    printed = float(line.text.split()[1])
    name = _run_name(done)
    chunk_at = None
    for chunk in sorted((h.store / "runs" / name / "logs").glob("*.log")):
        if b"first-line" in chunk.read_bytes():
            chunk_at = chunk.stat().st_mtime
            break
    out = {"first output line on the CLI's stdout": line.at - done.started,
           "launch → the job prints it": printed - done.started}
    if chunk_at is not None:
        out["job prints → log chunk in the store"] = chunk_at - printed
        out["log chunk in the store → CLI's stdout"] = line.at - chunk_at
    return out


def _folder_program(folder: Callable[[str, str], object], path: str) -> Callable[[], None]:
    """A Pulumi program declaring one `Folder` resource at `path`."""
    def program() -> None:
        folder("folder", path)
    return program


def _engine_alone(h: BenchHome, reps: int) -> dict[str, list[float]]:
    """`pulumi version`, and Engine.up/destroy of a stack with one dynamic Folder."""
    from dstack.stacks.engine import Engine
    from dstack.stacks.local_resources import Folder

    out: dict[str, list[float]] = {"version": [], "up": [], "destroy": []}
    for _ in range(reps):
        done = run([str(h.pulumi_bin()), "version"], h.home, h.pulumi_env(), timeout=60)
        out["version"].append(done.check("pulumi version").wall)
    engine = Engine(h.home)
    for i in range(reps):
        name, path = f"bench-engine-{i}", str(h.root / "engine-folders" / str(i))
        t0 = time.perf_counter()
        engine.up(name, _folder_program(Folder, path))
        t1 = time.perf_counter()
        engine.destroy(name, lambda: None)
        t2 = time.perf_counter()
        engine.remove(name)
        out["up"].append(t1 - t0)
        out["destroy"].append(t2 - t1)
    return out


def _packaging_s(project: Path, reps: int) -> list[float]:
    """`package_code` of the project, in-process (the CLI does the same, then one put)."""
    from dstack.code.packaging import package_code

    times = []
    for _ in range(max(reps, 3)):
        with tempfile.TemporaryDirectory(prefix="dstack-bench-pkg-") as tmp:
            t0 = time.perf_counter()
            package_code(project, Path(tmp))
            times.append(time.perf_counter() - t0)
    return times


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def measure(cfg: Config) -> Section:
    """Run the overhead scenario and return its section of the report."""
    sec = Section("overhead", "1. Start-up overhead of `dstack run` (local backend)")
    reps = cfg.repeat
    with BenchHome("overhead", cfg.base, cfg.keep) as h:
        h.write_project(WORKFLOWS, FILES)
        log("overhead: first run in a fresh home (it also creates the workspace stack)")
        first = h.dstack("run", "noop", timeout=RUN_TIMEOUT)
        # The job's `python` is this interpreter (the runner puts its folder first on PATH).
        direct = [run([sys.executable, "noop.py"], h.project, h.env(), timeout=60)
                  .check("python noop.py").wall for _ in range(max(reps, 3))]
        packaging = _packaging_s(h.project, reps)
        boot = boot_epoch()
        totals: list[float] = []
        phases: dict[str, list[float]] = {}
        firsts: dict[str, list[float]] = {}
        audits: dict[str, list[float]] = {}
        seen_uploading = 0
        for i in range(reps):
            log(f"overhead: attached runs, repetition {i + 1}/{reps}")
            with RunWatcher(h.store, h.run_names()) as watcher:
                done = h.dstack("run", "noop", timeout=RUN_TIMEOUT)
            name = _run_name(done)
            doc = h.run_doc(name)
            if doc["status"] != "done":
                raise BenchError(f"run {name} ended {doc['status']}: {doc.get('message')}")
            totals.append(done.wall)
            seen_uploading += watcher.first_with("uploading") is not None
            split = noop_phases(done, watcher, doc, _stack_times(h, name), _med(packaging),
                                boot)
            for key, value in split.items():
                phases.setdefault(key, []).append(value)
            for key, value in _audit_durations(h, name).items():
                audits.setdefault(key, []).append(value)
            hello = h.dstack("run", "hello", timeout=RUN_TIMEOUT)
            for key, value in _first_output(h, hello).items():
                firsts.setdefault(key, []).append(value)
        log("overhead: the engine alone, and the CLI's fixed costs")
        engine = _engine_alone(h, reps)
        validate = [h.dstack("validate").wall for _ in range(reps)]
        dry = [h.dstack("run", "noop", "--dry-run").wall for _ in range(reps)]

    base = _med(direct)
    sec.add("`python noop.py` run directly", "s", direct)
    sec.add("`dstack run noop` attached, launch to exit", "s", totals)
    overhead = sec.add("overhead: `dstack run` - direct", "s", [t - base for t in totals],
                       Target(OVERHEAD_TARGET_S))
    sec.add("first output line on the CLI's stdout, from launch", "s",
            firsts.get("first output line on the CLI's stdout", []),
            Target(FIRST_OUTPUT_TARGET_S))
    sec.add("first run in a fresh home (creates the workspace stack)", "s", [first.wall])
    sec.add("engine alone: `pulumi version` start-up", "s", engine["version"])
    sec.add("engine alone: `Engine.up`, stack with one dynamic Folder", "s", engine["up"])
    sec.add("engine alone: `Engine.destroy` of it", "s", engine["destroy"])

    total = _med(totals)
    rows = []
    for key, values in phases.items():
        share = f"{100 * _med(values) / total:.0f} %" if key in PHASES and total else "(overlap)"
        rows.append([key, fmt(_med(values)), fmt(min(values)), fmt(max(values)), share])
    sec.detail("Where the time of `dstack run noop` goes (medians; the first 8 rows add up "
               "to the run)", ["phase", "median s", "min s", "max s", "share"], rows)
    sec.detail("First output: where the time to the first line goes",
               ["step", "median s", "min s", "max s"],
               [[k, fmt(_med(v)), fmt(min(v)), fmt(max(v))] for k, v in firsts.items()])
    fixed = [
        ("`dstack validate` (CLI start-up, spec load)", validate),
        ("`dstack run noop --dry-run` (CLI start-up, spec, deps, backend import)", dry),
        ("`package_code` of the project, in-process", packaging),
        *((f"Pulumi history: `{k}` update duration (1 s resolution)", v)
          for k, v in audits.items()),
    ]
    sec.detail("Fixed costs and the engine's share", ["measurement", "median s", "min s",
                                                      "max s"],
               [[k, fmt(_med(v)), fmt(min(v)), fmt(max(v))] for k, v in fixed])
    alone = _med(engine["up"]) + _med(engine["destroy"])
    in_run = _med(phases.get("engine up, whole update (overlaps the runner and job)", [])) + \
        _med(phases.get("stack destroy (incl. noticing the end)", []))
    if overhead.values:
        sec.notes.append(
            f"The engine alone (`Engine.up` + `Engine.destroy` of a one-Folder stack) takes "
            f"{fmt(alone)} s, {100 * alone / overhead.median:.0f} % of the median overhead "
            f"({fmt(overhead.median)} s); inside the run, the engine's `up` (whole update) "
            f"plus the destroy phase take {fmt(in_run)} s "
            f"({100 * in_run / overhead.median:.0f} %).")
    sec.notes.append(
        "Phases come from timestamps only: the CLI's stderr lines (`packaged`, "
        "`provisioning stack`), the runner's process start time, `started_at`, the first "
        "`uploading` version of run.json (mtime, polled every 5 ms), `finished_at`, and the "
        "end of `destroy` recorded in stack.json. `CLI start, spec and deps` is launch to the "
        "`packaged` line minus the in-process packaging time.")
    if seen_uploading < reps:
        sec.notes.append(
            f"The watcher saw the short-lived `uploading` status in {seen_uploading} of {reps} "
            f"run(s); when it is missed, the final sync counts as 0 s and its time is in the "
            f"job phase (with no artifacts it lasts a few ms).")
    return sec

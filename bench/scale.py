"""Scenario 3: listing commands over a large store, and many runs at once.

10,000 runs and 10,000 tags are written straight into a store folder as valid `RunRecord`
and `Tag` documents (finished, torn down, so no command has anything to repair), then
`dstack ps -a`, `dstack ps` and `dstack tags list`, as tables and as `--json`, are timed as
subprocesses, and what each spends importing (`python -X importtime`) is tabled. Then N
concurrent `dstack run` of a trivial job in one home (after one run that creates the
workspace stack): whether all succeed, the wall time, and each CLI's
peak memory — its own `VmHWM`, and `ru_maxrss` from `wait4`, the largest process among it
and the processes it waited for (the engine, its plugins).
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

from bench.command import BenchError, Completed
from bench.config import Config
from bench.homes import BenchHome, log
from bench.importtime import COLUMNS, command_imports
from bench.stats import Section, Target, fmt
from dstack.names import ADJECTIVES, ANIMALS
from dstack.run.job import ArtifactPath, Job
from dstack.run.project import project_of
from dstack.run.record import RunRecord, Status, run_key, run_stack_name
from dstack.run.tags import Tag, tag_key
from dstack.store.local import SETTLE_NS, LocalStore

N_RUNS = 10_000
N_TAGS = 10_000
LIST_TARGET_S = 0.3
LIST_REPEAT_MAX = 3
"""Listing 10,000 runs can take many seconds while it misses its target: 3 repetitions."""
CONCURRENT = 20
CONCURRENT_QUICK = 5
RUN_TIMEOUT_S = 600.0

NOOP = """
workflows:
  - name: noop
    provider: python
    file: noop.py
"""


def _iso(t: datetime) -> str:
    return t.isoformat(timespec="milliseconds")


def generate(h: BenchHome, n_runs: int, n_tags: int) -> list[str]:
    """Write `n_runs` finished runs of the home's project and `n_tags` tags into its store;
    run names."""
    store = LocalStore(h.store)
    project = project_of(h.project)
    job = Job(provider="python", argv=["python", "train.py"], args=["--epoch", "10"],
              artifacts=[ArtifactPath(path="checkpoint")], resources={"interruptible": False})
    start = datetime.now(timezone.utc) - timedelta(minutes=n_runs + 10)
    workflows = ("prepare", "train", "evaluate")
    pairs = len(ADJECTIVES) * len(ANIMALS)
    names = []
    for i in range(n_runs):
        pair = i % pairs
        name = f"{ADJECTIVES[pair % len(ADJECTIVES)]}-{ANIMALS[pair // len(ADJECTIVES)]}-" \
               f"{i // pairs + 1}"
        submitted = start + timedelta(minutes=i)
        failed = i % 17 == 0
        record = RunRecord(
            name=name, workflow=workflows[i % 3], project=project, provider="python",
            profile="local",
            backend="local", status=Status.FAILED if failed else Status.DONE,
            submitted_at=_iso(submitted), started_at=_iso(submitted + timedelta(seconds=3)),
            finished_at=_iso(submitted + timedelta(seconds=45)), exit_code=1 if failed else 0,
            message="the job exited with 1" if failed else None, job=job,
            code="0" * 64, stack=run_stack_name(name), torn_down=True,
            instance={"host": "bench-host", "pid": 100000 + i, "workdir": f"/tmp/{name}"},
            submitter={"host": "bench-host", "pid": 200000 + i},
        )
        store.put_json(run_key(name), record.model_dump(mode="json"))
        names.append(name)
    for i in range(n_tags):
        run = names[i % len(names)]
        tag = Tag(name=f"v{i:05d}", run=run, workflow=workflows[(i % len(names)) % 3],
                  created_at=_iso(start + timedelta(minutes=i, seconds=50)))
        store.put_json(tag_key(tag.name), tag.model_dump(mode="json"))
    return names


LISTINGS = (
    ("`dstack ps -a`", ("ps", "-a")),
    ("`dstack ps -a --json`", ("ps", "-a", "--json")),
    ("`dstack ps`", ("ps",)),
    ("`dstack ps --json`", ("ps", "--json")),
    ("`dstack tags list`", ("tags", "list")),
    ("`dstack tags list --json`", ("tags", "list", "--json")),
)


def _check_listing(args: tuple[str, ...], done: Completed) -> None:
    """The command listed what the store holds (so a fast but wrong answer is caught)."""
    if "--json" not in args:
        return
    rows = json.loads(done.out_text())
    want = {("ps", "-a"): N_RUNS, ("ps",): 10, ("tags", "list"): N_TAGS}[args[:-1]]
    if len(rows) != want:
        raise BenchError(f"dstack {' '.join(args)} listed {len(rows)} rows, not {want}")


def _listings(cfg: Config, sec: Section) -> None:
    with BenchHome("scale-list", cfg.base, cfg.keep) as h:
        empty = [h.dstack("ps", "-a").wall for _ in range(cfg.repeat)]
        log(f"scale: writing {N_RUNS} runs and {N_TAGS} tags into a store")
        t0 = time.perf_counter()
        generate(h, N_RUNS, N_TAGS)
        made = time.perf_counter() - t0
        # The runs and tags were written behind dstack's back, so the first listing reads
        # every document and builds the listing cache: measured apart, not in the medians.
        # It waits until the folders' mtimes stand for their contents (a folder changed in
        # the last `SETTLE_NS` is listed every time), as they do a few seconds after a run.
        time.sleep(SETTLE_NS / 1e9 + 0.5)
        cold = h.dstack("ps", "-a", timeout=300).wall
        times: dict[str, list[float]] = {}
        reps = min(cfg.repeat, LIST_REPEAT_MAX)
        for i in range(reps):
            log(f"scale: listing commands, repetition {i + 1}/{reps}")
            for label, args in LISTINGS:
                done = h.dstack(*args, timeout=300)
                _check_listing(args, done)
                times.setdefault(label, []).append(done.wall)
        log("scale: import times of the listing commands (python -X importtime)")
        imports = [[label, *(fmt(ms, "ms") for ms in command_imports(h, args, reps).values())]
                   for label, args in LISTINGS]
    sec.add("`dstack ps -a` on an empty store (the CLI's floor)", "s", empty)
    sec.add(f"`dstack ps -a` first after {N_RUNS} runs and {N_TAGS} tags were written "
            "(reads them all, builds the cache)", "s", [cold])
    for label, values in times.items():
        sec.add(f"{label}, {N_RUNS} runs / {N_TAGS} tags", "s", values, Target(LIST_TARGET_S))
    sec.detail(f"Import time of each listing command (ms; median of {reps}, each module's own "
               "time summed by package)", ["command", *COLUMNS], imports)
    sec.notes.append(f"Writing {N_RUNS} run and {N_TAGS} tag documents with LocalStore took "
                     f"{made:.1f} s. Listing commands ran {reps} time(s) each (at most "
                     f"{LIST_REPEAT_MAX}); each `--json` answer was checked for its row count.")


def _concurrent(cfg: Config, sec: Section) -> None:
    n = CONCURRENT_QUICK if cfg.quick else CONCURRENT
    with BenchHome("scale-runs", cfg.base, cfg.keep) as h:
        h.write_project(NOOP, {"noop.py": "# does nothing\n"})
        log("scale: one run to create the workspace stack")
        h.dstack("run", "noop", timeout=RUN_TIMEOUT_S)
        before = h.run_names()
        log(f"scale: {n} concurrent `dstack run noop`")
        t0 = time.time()
        cmds = [h.launch("run", "noop", watch_rss=True) for _ in range(n)]
        results: list[Completed | BenchError] = []
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for cmd in cmds:
            try:
                results.append(cmd.wait(max(1.0, deadline - time.monotonic())))
            except BenchError as exc:
                results.append(exc)
        finished = [r for r in results if isinstance(r, Completed)]
        wall = max((r.ended for r in finished), default=time.time()) - t0
        new = sorted(h.run_names() - before)
        docs = [h.run_doc(name) for name in new]
        ok = sum(1 for r in finished if r.returncode == 0)
        done = sum(1 for d in docs if d["status"] == "done" and d["torn_down"])
        problems = h.leftovers()
        failures = [str(r)[:300] if isinstance(r, BenchError) else
                    f"exit {r.returncode}: {r.err_text()[-300:]}"
                    for r in results if not isinstance(r, Completed) or r.returncode != 0]
    sec.add(f"{n} concurrent `dstack run noop`: runs done and torn down", "runs", [done],
            Target(n, higher=True))
    sec.add(f"{n} concurrent `dstack run noop`: wall time, first launch to last exit", "s",
            [wall])
    sec.add(f"{n} concurrent: each CLI's launch-to-exit time", "s", [r.wall for r in finished])
    sec.add(f"{n} concurrent: each CLI's own peak RSS (VmHWM)", "MiB",
            [r.own_peak_kib / 1024 for r in finished if r.own_peak_kib])
    sec.add(f"{n} concurrent: largest process in each CLI's tree (wait4 ru_maxrss)", "MiB",
            [r.tree_peak_kib / 1024 for r in finished if r.tree_peak_kib])
    sec.detail(f"{n} concurrent runs", ["CLIs exited 0", "runs in the store", "done and torn "
                                        "down", "leftovers after", "wall s"],
               [[f"{ok}/{n}", str(len(new)), str(done), str(len(problems)), fmt(wall)]])
    if failures:
        sec.notes.append("Concurrent run failures: " + " | ".join(failures[:5]))
    if problems:
        sec.notes.append("Left behind by the concurrent runs: " + "; ".join(problems[:5]))


def measure(cfg: Config) -> Section:
    """Run the scale scenarios and return their section."""
    sec = Section("scale", "3. Scale: listing 10,000 runs and tags; concurrent runs")
    _listings(cfg, sec)
    _concurrent(cfg, sec)
    return sec


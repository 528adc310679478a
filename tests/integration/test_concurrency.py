"""Concurrency on the local backend, through the installed `dstack` command: 20 runs at once
in a fresh dstack home, the same tag added by several commands at once, `stop` racing the
job's natural end, and two `gc` at once.

Whatever the interleaving: every command succeeds or fails with a clear message, run names
are unique, every run had its own stack and it was destroyed exactly once, and every document
in the store and every stack in the state backend is valid afterwards.

On 2 cores the 20 runs take about 80-100 s (each is an engine update and a destroy, about 6 s
of CPU), so the time-outs are generous.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from dstack.run.record import RunRecord
from dstack.run.tags import Tag

from .harness import TERMINAL, Dstack, make_home, poll, run_resources, write_project

pytestmark = pytest.mark.engine

RUNS_AT_ONCE = 20

WORKFLOWS = """
workflows:
  - name: trivial
    provider: bash
    commands: ["mkdir -p out", "echo \\"$DSTACK_RUN $1\\" | tee out/who.txt"]
    artifacts: ["out"]
  - name: quick
    provider: bash
    commands: ["echo quick"]
  - name: gated
    provider: bash
    commands:
      - echo waiting
      - while [ ! -e go ]; do sleep 0.02; done
      - echo going
"""


@pytest.fixture(scope="module")
def dstack(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Dstack:
    """The project of this module, with a dstack home shared by its tests."""
    project = write_project(tmp_path_factory.mktemp("project"), WORKFLOWS)
    return Dstack(module_home, project)


def _start(dstack: Dstack, args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(dstack.argv(*args), cwd=dstack.project, env=dstack.env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(procs: list[subprocess.Popen[str]], timeout: float) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each process, once all have ended."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def _history(home: Path, run: str) -> list[dict[str, Any]]:
    """The Pulumi history of the run's stack (what `pulumi stack history` reads), oldest first."""
    folder = home / "state" / ".pulumi" / "history" / "dstack" / f"run-{run}"
    entries = [json.loads(p.read_text()) for p in folder.glob("*.history.json")]
    return sorted(entries, key=lambda e: e["startTime"])


def _destroyed_once(dstack: Dstack, run: str) -> None:
    """The run's stack was brought up once and its resources deleted exactly once."""
    history = _history(dstack.home, run)
    assert [h["kind"] for h in history][:1] == ["update"], history
    assert all(h["result"] == "succeeded" for h in history), history
    deleting = [h for h in history if h["kind"] == "destroy" and
                h.get("resourceChanges", {}).get("delete")]
    assert len(deleting) == 1, history
    assert [h["kind"] for h in history].count("update") == 1, history
    recorded = json.loads((dstack.home / "store" / "runs" / run / "stack.json").read_text())
    destroys = [u for u in recorded["updates"] if u["kind"] == "destroy" and u["changes"]]
    assert len(destroys) == 1, recorded
    assert {(c["op"], c["type"].rsplit(":", 1)[-1]) for c in destroys[0]["changes"]} == {
        ("delete", "Folder"), ("delete", "RunnerProcess")}
    dstack.assert_torn_down(run)


def _store_intact(home: Path) -> list[RunRecord]:
    """Every run document is valid and no temporary file is left in the store."""
    store = home / "store"
    leftovers = [p for p in store.rglob("*") if p.name.endswith((".tmp", ".part"))]
    assert leftovers == []
    return [RunRecord.model_validate_json(p.read_text()) for p in store.glob("runs/*/run.json")]


def _no_locks(home: Path) -> None:
    locks = home / "state" / ".pulumi" / "locks"
    assert sorted(p.relative_to(locks).as_posix() for p in locks.rglob("*.json")) == []


@pytest.mark.timeout(900)
def test_twenty_runs_at_once_in_a_fresh_home(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", WORKFLOWS)
    dstack = Dstack(make_home(tmp_path / "dstack-home"), project)
    t0 = time.monotonic()
    procs = [_start(dstack, ["run", "trivial", f"job-{i}"]) for i in range(RUNS_AT_ONCE)]
    results = _finish(procs, timeout=780)
    wall = time.monotonic() - t0
    print(f"\n{RUNS_AT_ONCE} runs at once took {wall:.0f}s")

    names = []
    for i, (rc, out, err) in enumerate(results):
        assert rc == 0, f"run {i} exited {rc}:\n{err}"
        match = re.search(r"run (\S+) submitted", err)
        assert match, err
        names.append(match.group(1))
        assert out.splitlines()[0] == f"{names[-1]} job-{i}", out
        assert "Traceback" not in err
    assert len(set(names)) == RUNS_AT_ONCE, names

    records = {r.name: r for r in _store_intact(dstack.home)}
    assert set(records) == set(names)
    for i, name in enumerate(names):
        record = records[name]
        assert (record.status.value, record.exit_code, record.torn_down) == ("done", 0, True)
        assert record.stack == f"run-{name}"
        assert dstack.artifact(name, "out/who.txt").read_text() == f"{name} job-{i}\n"
        _destroyed_once(dstack, name)
    assert set(dstack.stack_files()) == {f"run-{n}" for n in names}
    # The workspace stack was brought up once, by one of them, the others waited for it.
    workspace = dstack.home / "state" / ".pulumi" / "history" / "dstack" / "workspace-local"
    assert len(list(workspace.glob("*.history.json"))) == 1
    _no_locks(dstack.home)
    trail = dstack.json("audit", names[0])
    assert [t["kind"] for t in trail] == ["up", "destroy"]


def _upload_runs(dstack: Dstack, tmp_path: Path, n: int) -> list[str]:
    """`n` finished runs, made without the engine: uploads tagged src-0 ... src-N."""
    (tmp_path / "f.txt").write_text("data\n")
    procs = [subprocess.Popen(dstack.argv("tags", "add", f"src-{i}", "--artifact", "f.txt"),
                              cwd=tmp_path, env=dstack.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(n)]
    for rc, _out, err in _finish(procs, timeout=120):
        assert rc == 0, err
    tags = {t["name"]: t["run"] for t in dstack.json("tags", "list")}
    return [tags[f"src-{i}"] for i in range(n)]


@pytest.mark.timeout(300)
def test_the_same_tag_added_at_once_exactly_one_wins(dstack: Dstack, tmp_path: Path) -> None:
    runs = _upload_runs(dstack, tmp_path, 4)
    results = _finish([_start(dstack, ["tags", "add", "shared", run]) for run in runs], 120)
    winners = [run for run, (rc, _, _) in zip(runs, results, strict=True) if rc == 0]
    assert len(winners) == 1, results
    doc = Tag.model_validate_json(
        (dstack.home / "store" / "tags" / "shared.json").read_text())
    assert doc.run == winners[0]
    for run, (rc, _out, err) in zip(runs, results, strict=True):
        if run == winners[0]:
            continue
        assert rc == 2, err
        assert f"tag 'shared' already points at run {winners[0]}" in err
        assert "dstack tags delete shared" in err and "Traceback" not in err
    assert {t["name"]: t["run"] for t in dstack.json("tags", "list")}["shared"] == winners[0]

    # The same run tagged by several commands at once: all agree, one document.
    results = _finish([_start(dstack, ["tags", "add", "again", runs[0]]) for _ in range(3)], 120)
    assert [rc for rc, _, _ in results] == [0] * 3, results
    assert Tag.model_validate_json(
        (dstack.home / "store" / "tags" / "again.json").read_text()).run == runs[0]
    _store_intact(dstack.home)


@pytest.mark.timeout(300)
def test_the_same_tag_uploaded_at_once_leaves_one_run(dstack: Dstack, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("data\n")
    before = dstack.run_names()
    procs = [subprocess.Popen(dstack.argv("tags", "add", "upload", "--artifact", "f.txt"),
                              cwd=tmp_path, env=dstack.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = _finish(procs, timeout=120)
    assert sorted(rc for rc, _, _ in results) == [0, 2, 2, 2], results
    winner = Tag.model_validate_json(
        (dstack.home / "store" / "tags" / "upload.json").read_text()).run
    for rc, _out, err in results:
        if rc != 0:
            assert "tag 'upload' already" in err and "Traceback" not in err, err
    # Exactly one upload run is left, the tagged one, with its file.
    assert dstack.run_names() - before == {winner}
    assert dstack.artifact(winner, "f.txt").read_text() == "data\n"
    _store_intact(dstack.home)


def _when_running(dstack: Dstack, before: set[str], count: int) -> list[str]:
    def check() -> list[str] | None:
        new = sorted(dstack.run_names() - before)
        if len(new) < count:
            return None
        try:  # a run's folder appears a moment before its record is linked into it
            statuses = [(dstack.record(r)["status"], dstack.record(r)["instance"],
                         (dstack.home / "workdirs" / r / "work" / "repo").is_dir())
                        for r in new]
        except FileNotFoundError:
            return None
        return new if all(s == "running" and i and repo for s, i, repo in statuses) else None
    return poll("the runs to be running", check, timeout=180, every=0.1)


@pytest.mark.timeout(400)
def test_stop_racing_the_natural_end_gives_one_consistent_end(dstack: Dstack) -> None:
    delays = [0.0, 0.1, 0.2, 0.4]
    before = dstack.run_names()
    attached = [_start(dstack, ["run", "gated"]) for _ in delays]
    try:
        runs = _when_running(dstack, before, len(delays))
    except BaseException:
        _finish([*attached], timeout=0)
        raise
    # Each run's job ends `delay` seconds after `dstack stop` asked its runner to stop (the
    # runner looks every 0.2 s): the stop request, the job's end, the attached CLI's
    # teardown and the stop's teardown all race.
    stops = [_start(dstack, ["stop", run, "-y"]) for run in runs]
    pending = dict(zip(runs, delays, strict=True))
    due: dict[str, float] = {}
    deadline = time.monotonic() + 120
    while pending and time.monotonic() < deadline:
        for run in list(pending):
            if run not in due and (dstack.home / "store" / "runs" / run / "stop.json").exists():
                due[run] = time.monotonic() + pending[run]
            if run in due and time.monotonic() >= due[run]:
                (dstack.home / "workdirs" / run / "work" / "repo" / "go").touch()
                del pending[run]
        time.sleep(0.002)
    assert not pending, f"dstack stop never asked these runs to stop: {pending}"
    stopped = _finish(stops, timeout=240)
    ended = _finish(attached, timeout=240)

    ends = {}
    for (rc, _out, err), run in zip(stopped, runs, strict=True):
        assert rc == 0, err
        record = dstack.record(run)
        assert f"{run} {record['status']}" in err
    for rc, out, err in ended:
        run = re.search(r"run (\S+) submitted", err).group(1)  # type: ignore[union-attr]
        record = dstack.record(run)
        ends[run] = record["status"]
        assert record["status"] in ("done", "stopped"), record
        if record["status"] == "done":
            assert (rc, record["exit_code"], record["message"]) == (0, 0, None), (rc, record)
            assert "going" in out
        else:
            assert record["message"] == "stopped by the user", record
            assert rc in (130, 128 + 15), (rc, record)
        assert f"{run} {record['status']}" in err
        _destroyed_once(dstack, run)
    assert set(ends) == set(runs)
    print(f"\nstop racing the end: {sorted(ends.values())}")
    _store_intact(dstack.home)
    _no_locks(dstack.home)


@pytest.mark.timeout(400)
def test_two_gc_at_once_agree(dstack: Dstack) -> None:
    # Three detached runs whose jobs end together, after all three were submitted (so no
    # `dstack run` tore down another's stack): three stacks for gc to destroy.
    launched = _finish([_start(dstack, ["run", "gated", "-d"]) for _ in range(3)], 300)
    runs = [out.strip() for _rc, out, _err in launched]
    assert [rc for rc, _, _ in launched] == [0] * 3, launched
    for run in runs:
        repo = dstack.home / "workdirs" / run / "work" / "repo"
        poll(f"the code of {run} in place", repo.is_dir, timeout=90)
        (repo / "go").touch()
    for run in runs:
        assert dstack.wait_record(run, TERMINAL, timeout=90)["status"] == "done"
        assert run_resources(dstack.stack_resource_types(run))
    results = _finish([_start(dstack, ["gc"]) for _ in range(2)], timeout=300)
    destroyed: list[str] = []
    for rc, _out, err in results:
        assert rc == 0, err
        assert "Traceback" not in err
        destroyed += re.findall(r"destroyed stack run-(\S+) \(\d+ resource", err)
    # Each stack destroyed by exactly one of them.
    assert sorted(destroyed) == sorted(runs), results
    for run in runs:
        _destroyed_once(dstack, run)
        assert dstack.record(run)["status"] == "done"
    proc = dstack("gc")
    assert "0 stale lock(s), 0 finished run(s), 0 orphan stack(s)" in proc.stderr
    _store_intact(dstack.home)
    _no_locks(dstack.home)

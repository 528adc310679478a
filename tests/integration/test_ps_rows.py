"""`dstack ps -a` over many settled runs takes their rows from what an earlier listing kept
(`dstack.run.row_cache`): the same output as rendering them, in the time zone of this
command, and with the tags of now."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dstack.run.job import ArtifactPath, Job
from dstack.run.project import project_of
from dstack.run.record import RunRecord, Status, run_key, run_stack_name
from dstack.run.row_cache import MIN_KEPT
from dstack.store.local import LocalStore

from .harness import Dstack, make_home, write_project

N = MIN_KEPT + 50


def _write_runs(home: Path, project: Path) -> None:
    store = LocalStore(home / "store")
    job = Job(provider="bash", argv=["true"], artifacts=[ArtifactPath(path="out")])
    start = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
    for i in range(N):
        at = start + timedelta(minutes=i)
        name = f"run-{i:04d}"
        record = RunRecord(
            name=name, workflow="train", project=project_of(project), provider="bash",
            profile="local", backend="local", status=Status.DONE, job=job,
            submitted_at=at.isoformat(timespec="milliseconds"),
            started_at=(at + timedelta(seconds=2)).isoformat(timespec="milliseconds"),
            finished_at=(at + timedelta(seconds=65)).isoformat(timespec="milliseconds"),
            exit_code=0, code="0" * 64, stack=run_stack_name(name), torn_down=True)
        store.put_json(run_key(name), record.model_dump(mode="json"))


def _shifted(line: str, hours: int) -> str:
    """A `ps` line with its SUBMITTED time `hours` later."""
    date, time = line.split()[5:7]
    when = datetime.fromisoformat(f"{date} {time}") + timedelta(hours=hours)
    return line.replace(f"{date} {time}", when.isoformat(" "))


def test_kept_rows_show_as_rendered_ones_in_each_time_zone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = make_home(tmp_path / "home")
    project = write_project(tmp_path / "project", "workflows: []\n")
    _write_runs(home, project)
    dstack = Dstack(home, project)
    rows_file = home / "cache" / "rows-local.json"

    def ps(tz: str) -> list[str]:
        monkeypatch.setenv("TZ", tz)
        return dstack("ps", "-a").stdout.splitlines()

    utc = ps("UTC")
    assert rows_file.exists()
    assert len(utc) == N + 1 and utc[-1].split()[:4] == ["run-0000", "train", "bash", "done"]
    assert "2024-03-01 12:00:00" in utc[-1] and "1m03s" in utc[-1]
    assert ps("UTC") == utc  # from the kept rows
    tokyo = ps("Asia/Tokyo")  # kept under another zone: rendered again
    assert tokyo[0] == utc[0] and tokyo[1:] == [_shifted(line, 9) for line in utc[1:]]
    assert ps("Asia/Tokyo") == tokyo
    dstack("tags", "add", "best", "run-0007")  # a tag shows on a kept row at once
    tagged = ps("Asia/Tokyo")
    [line] = [line for line in tagged if line.startswith("run-0007 ")]
    assert line.split()[-2:] == ["best", "out"]
    rows_file.unlink()  # rendered again from the runs: the same
    assert ps("Asia/Tokyo") == tagged

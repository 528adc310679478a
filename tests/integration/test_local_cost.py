"""What a local run cost: nothing dstack can price. Through the installed command and the real
Pulumi engine, `dstack ps` shows `—` for it and `dstack cost` counts it without a price."""

from __future__ import annotations

from pathlib import Path

import pytest

from .harness import Dstack, write_project

pytestmark = pytest.mark.engine

WORKFLOWS = """
workflows:
  - name: hello
    provider: bash
    commands: ["echo hello from here"]
"""


@pytest.mark.timeout(240)
def test_a_local_run_has_no_cost(home: Path, tmp_path: Path) -> None:
    dstack = Dstack(home, write_project(tmp_path / "project", WORKFLOWS))
    assert "hello from here" in dstack("run", "hello").stdout
    [row] = dstack.ps()
    assert row["backend"] == "local" and row["cost"] is None
    record = dstack.record(row["run"])
    assert record["billing"] is None and record["price_per_hour"] is None
    header, line = dstack("ps").stdout.splitlines()
    assert line[header.index(" COST ") + 1:].split()[0] == "\N{EM DASH}"  # its column

    report = dstack.json("cost", "--by", "day")
    assert [(g["runs"], g["priced"], g["cost"]) for g in report["groups"]] == [(1, 0, 0.0)]
    assert report["total"]["cost"] == 0.0 and "estimate" in report["estimate"]
    bad = dstack("cost", "--since", "last-week", expect=2)
    assert "--since 'last-week' is not a duration" in bad.stderr and "7d" in bad.stderr
    bad = dstack("cost", "--by", "wokflow", expect=2)
    assert "--by 'wokflow'" in bad.stderr and 'Did you mean "workflow"?' in bad.stderr

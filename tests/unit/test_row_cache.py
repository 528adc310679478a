"""Rows of runs that no longer change are rendered once and kept (`dstack.run.row_cache`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dstack.run.row_cache import MIN_KEPT, fixed, rows

T = "2024-01-01T00:00:00+00:00"


def run_doc(i: int, status: str = "done", torn_down: bool = True, **fields: Any) -> dict[str, Any]:
    return {"name": f"r-{i}", "status": status, "torn_down": torn_down, "submitted_at": T,
            "finished_at": T, "workflow": f"w{i}", **fields}


class Render:
    """A renderer that counts the runs it rendered."""

    def __init__(self, tag: str = "") -> None:
        self.tag = tag
        self.seen: list[str] = []

    def __call__(self, doc: dict[str, Any]) -> list[str]:
        self.seen.append(doc["name"])
        return [doc["name"], str(doc["workflow"]) + self.tag]


def test_what_can_no_longer_change() -> None:
    assert fixed(run_doc(1))
    assert not fixed(run_doc(1, status="running", torn_down=False))
    assert not fixed(run_doc(1, torn_down=False))  # finished, its stack still up
    assert not fixed(run_doc(1, finished_at=None))
    assert not fixed(run_doc(1, billing={"created_at": T, "deleted_at": None}))  # billed on
    assert fixed(run_doc(1, billing={"created_at": T, "deleted_at": T}))


def test_rows_of_settled_runs_are_rendered_once(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    docs = [run_doc(i) for i in range(MIN_KEPT)] + \
        [run_doc(MIN_KEPT, status="running", torn_down=False)]
    first = Render()
    shown = rows(path, "k1", docs, first)
    assert shown == [[d["name"], d["workflow"]] for d in docs]
    assert len(first.seen) == len(docs)
    again = Render("!")  # renders differently: what it renders shows
    assert rows(path, "k1", docs, again) == [*shown[:-1], [f"r-{MIN_KEPT}", f"w{MIN_KEPT}!"]]
    assert again.seen == [f"r-{MIN_KEPT}"]  # only the run still in progress
    assert set(json.loads(path.read_text())["rows"]) == {d["name"] for d in docs[:-1]}


def test_another_key_or_a_reused_name_renders_again(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    docs = [run_doc(i) for i in range(MIN_KEPT)]
    rows(path, "k1", docs, Render())
    other = Render("!")
    assert all(r[1].endswith("!") for r in rows(path, "k2", docs, other))  # another zone
    assert len(other.seen) == len(docs)
    docs[0] = run_doc(0, submitted_at="2024-02-01T00:00:00+00:00")  # removed, name reused
    reused = Render("?")
    assert rows(path, "k2", docs, reused)[0] == ["r-0", "w0?"]
    assert reused.seen == ["r-0"]


def test_a_short_listing_keeps_nothing_and_a_broken_file_is_rebuilt(tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    rows(path, "k", [run_doc(i) for i in range(MIN_KEPT - 1)], Render())
    assert not path.exists()
    path.write_text('{"key": "k", "rows": ')
    docs = [run_doc(i) for i in range(MIN_KEPT)]
    render = Render()
    assert len(rows(path, "k", docs, render)) == len(docs) == len(render.seen)
    assert json.loads(path.read_text())["key"] == "k"

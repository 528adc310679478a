"""Tags and dependencies on the local backend through the installed `dstack` command:
`--tag`, `depends-on` with `:TAG`, `wf:TAG` and `wf:latest`, and `dstack tags add|list|delete`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import Dstack, write_project

pytestmark = pytest.mark.engine

WORKFLOWS = """
workflows:
  - name: prepare
    provider: python
    file: prepare.py
    artifacts: ["data"]
  - name: use-tag
    depends-on: [":v1"]
    provider: python
    file: consume.py
    artifacts: ["result"]
  - name: use-prepare-tag
    depends-on: ["prepare:v1"]
    provider: python
    file: consume.py
    artifacts: ["result"]
  - name: wf
    provider: bash
    commands: ["echo wf"]
  - name: needs-wf
    depends-on: ["wf:latest"]
    provider: bash
    commands: ["echo needs wf"]
"""

FILES = {
    "prepare.py": """
        import json, os
        os.makedirs("data", exist_ok=True)
        with open("data/rows.json", "w") as f:
            json.dump({"made_by": os.environ["DSTACK_RUN"]}, f)
    """,
    "consume.py": """
        import json, os
        with open("data/rows.json") as f:
            data = json.load(f)
        os.makedirs("result", exist_ok=True)
        with open("result/seen.json", "w") as f:
            json.dump(data, f)
        print("consumed", data)
    """,
}


@pytest.fixture(scope="module")
def dstack(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Dstack:
    """The project of this module, with a dstack home shared by its tests."""
    project = write_project(tmp_path_factory.mktemp("project"), WORKFLOWS, FILES)
    return Dstack(module_home, project)


def _seen(dstack: Dstack, run: str) -> dict:
    return json.loads(dstack.artifact(run, "result/seen.json").read_text())


def _tags(dstack: Dstack) -> dict[str, dict]:
    return {t["name"]: t for t in dstack.json("tags", "list")}


@pytest.mark.timeout(300)
def test_tags_resolve_dependencies_and_can_be_added_uploaded_and_deleted(
        dstack: Dstack, tmp_path: Path) -> None:
    dstack("run", "prepare", "--tag", "v1")
    tagged = dstack.newest_run("prepare")["run"]
    tag = _tags(dstack)["v1"]
    assert (tag["run"], tag["workflow"]) == (tagged, "prepare")
    assert dstack.newest_run("prepare")["tags"] == ["v1"]

    # A newer run of prepare: prepare:latest moves on, v1 stays.
    dstack("run", "prepare")
    latest = dstack.newest_run("prepare")["run"]
    assert latest != tagged and dstack.newest_run("prepare")["tags"] == []

    for workflow in ("use-tag", "use-prepare-tag"):
        proc = dstack("run", workflow)
        assert "consumed" in proc.stdout
        run = dstack.newest_run(workflow)["run"]
        assert dstack.record(run)["deps"] == [tagged]
        assert _seen(dstack, run) == {"made_by": tagged}

    # Tag an existing run; refuse to move a tag silently.
    dstack("tags", "add", "v2", latest)
    assert _tags(dstack)["v2"]["run"] == latest
    proc = dstack("tags", "add", "v1", latest, expect=None)
    assert proc.returncode != 0 and "dstack tags delete v1" in proc.stderr
    assert _tags(dstack)["v1"]["run"] == tagged

    # Upload local files as a tagged set of artifacts, and use them as a dependency.
    local = tmp_path / "local"
    (local / "data").mkdir(parents=True)
    (local / "data" / "rows.json").write_text(json.dumps({"made_by": "hand"}))
    proc = dstack("tags", "add", "uploaded", "--artifact", "data", cwd=local)
    uploaded = _tags(dstack)["uploaded"]["run"]
    listing = dstack.json("artifacts", "list", ":uploaded")
    assert listing["run"] == uploaded
    assert [(f["path"], f["size"]) for f in listing["files"]] == [
        ("data/rows.json", len(json.dumps({"made_by": "hand"})))]
    out = tmp_path / "download"
    dstack("artifacts", "download", ":uploaded", "-o", str(out))
    assert json.loads((out / "data" / "rows.json").read_text()) == {"made_by": "hand"}
    [row] = dstack.ps(uploaded)
    assert (row["status"], row["tags"]) == ("done", ["uploaded"])

    dstack("run", "python", "consume.py", "--dep", ":uploaded", "--artifact", "result")
    run = dstack.newest_run()["run"]
    assert dstack.record(run)["deps"] == [uploaded]
    assert _seen(dstack, run) == {"made_by": "hand"}

    # Deleting a tag keeps its run; workflows that need the tag now fail before creating anything.
    dstack("tags", "delete", "v1", "-y")
    assert set(_tags(dstack)) == {"v2", "uploaded"}
    assert dstack.ps(tagged)[0]["status"] == "done"
    runs, stacks = dstack.run_names(), set(dstack.stack_files())
    proc = dstack("run", "use-tag", expect=None)
    assert proc.returncode != 0
    assert "v1" in proc.stderr and "Traceback" not in proc.stderr
    assert (dstack.run_names(), set(dstack.stack_files())) == (runs, stacks)


@pytest.mark.timeout(120)
def test_a_missing_dependency_says_what_to_run_and_creates_nothing(dstack: Dstack) -> None:
    runs, stacks = dstack.run_names(), set(dstack.stack_files())
    proc = dstack("run", "needs-wf", expect=None)
    assert proc.returncode != 0
    assert "dstack run wf" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (dstack.run_names(), set(dstack.stack_files())) == (runs, stacks)

    proc = dstack("run", "bash", "echo hi", "--dep", "wf:latest", expect=None)
    assert proc.returncode != 0 and "dstack run wf" in proc.stderr
    assert (dstack.run_names(), set(dstack.stack_files())) == (runs, stacks)


@pytest.mark.timeout(120)
def test_run_with_a_tag_that_exists_is_refused_before_anything_is_created(
        dstack: Dstack, tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_text("x")
    dstack("tags", "add", "taken", "--artifact", "f.txt", cwd=tmp_path)
    owner = _tags(dstack)["taken"]["run"]
    runs, stacks = dstack.run_names(), set(dstack.stack_files())

    proc = dstack("run", "wf", "--tag", "taken", expect=None)
    assert _tags(dstack)["taken"]["run"] == owner
    assert proc.returncode != 0, "the run went ahead though its tag cannot be added"
    assert "dstack tags delete taken" in proc.stderr
    assert (dstack.run_names(), set(dstack.stack_files())) == (runs, stacks)

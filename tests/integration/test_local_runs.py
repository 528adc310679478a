"""`dstack run` end to end on the local backend, through the installed command and the real
Pulumi engine: a prepare → train pipeline, exit codes, spec errors and the audit trail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from .harness import Dstack, make_home, write_project

pytestmark = pytest.mark.engine

WORKFLOWS = """
workflows:
  - name: prepare
    provider: python
    file: prepare.py
    artifacts: ["data"]
  - name: train
    depends-on: [prepare:latest]
    provider: python
    file: train.py
    artifacts: ["checkpoint"]
  - name: fail
    provider: python
    file: fail.py
"""

FILES = {
    "prepare.py": """
        import json, os
        os.makedirs("data", exist_ok=True)
        with open("data/rows.json", "w") as f:
            json.dump({"rows": [1, 2, 3], "made_by": os.environ["DSTACK_RUN"]}, f)
        print("prepared by", os.environ["DSTACK_RUN"])
    """,
    "train.py": """
        import json, os, sys
        with open("data/rows.json") as f:
            data = json.load(f)
        os.makedirs("checkpoint", exist_ok=True)
        with open("checkpoint/model.json", "w") as f:
            json.dump({"argv": sys.argv[1:], "data": data, "run": os.environ["DSTACK_RUN"]}, f)
        print("ARGV=" + json.dumps(sys.argv[1:]))
    """,
    "fail.py": """
        import sys
        print("about to fail")
        sys.exit(3)
    """,
}


@pytest.fixture(scope="module")
def dstack(module_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Dstack:
    """The pipeline project, with a dstack home shared by this module's tests."""
    project = write_project(tmp_path_factory.mktemp("project"), WORKFLOWS, FILES)
    return Dstack(module_home, project)


def _checkpoint(dstack: Dstack, run: str) -> dict:
    return json.loads(dstack.artifact(run, "checkpoint/model.json").read_text())


@pytest.mark.timeout(240)
def test_prepare_then_train_passes_unknown_flags_through(dstack: Dstack, tmp_path: Path) -> None:
    proc = dstack("run", "prepare")
    assert "prepared by" in proc.stdout
    prepare = dstack.newest_run("prepare")
    assert prepare["status"] == "done" and prepare["exit_code"] == 0
    assert prepare["artifacts"] == ["data"]
    dstack.assert_torn_down(prepare["run"])

    # The workflow form: flags dstack does not know go to train.py exactly as given.
    proc = dstack("run", "train", "--epoch", "3", "--seed", "2", "--batch-size", "128")
    argv = ["--epoch", "3", "--seed", "2", "--batch-size", "128"]
    assert f"ARGV={json.dumps(argv)}" in proc.stdout.splitlines()
    train = dstack.newest_run("train")
    assert train["status"] == "done"
    model = _checkpoint(dstack, train["run"])
    assert model["argv"] == argv
    assert model["data"] == {"rows": [1, 2, 3], "made_by": prepare["run"]}
    assert dstack.record(train["run"])["deps"] == [prepare["run"]]

    # Only the run's own artifact paths are saved, not the dependency's data/ it was given.
    listing = dstack.json("artifacts", "list", train["run"])
    assert listing["run"] == train["run"]
    assert [f["path"] for f in listing["files"]] == ["checkpoint/model.json"]
    size = dstack.artifact(train["run"], "checkpoint/model.json").stat().st_size
    assert listing["files"][0]["size"] == size

    out = tmp_path / "downloaded"
    dstack("artifacts", "download", train["run"], "-o", str(out))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "checkpoint/model.json"]
    assert json.loads((out / "checkpoint" / "model.json").read_text()) == model
    one = tmp_path / "one-file"
    dstack("artifacts", "download", prepare["run"], "data/rows.json", "-o", str(one))
    assert json.loads((one / "data" / "rows.json").read_text())["made_by"] == prepare["run"]

    logs = dstack("logs", train["run"]).stdout
    assert f"ARGV={json.dumps(argv)}" in logs.splitlines()

    # The provider form: --dep and --artifact are dstack's, --epoch 3 is the script's.
    proc = dstack("run", "python", "train.py", "--epoch", "3", "--dep", "prepare:latest",
                  "--artifact", "checkpoint")
    assert 'ARGV=["--epoch", "3"]' in proc.stdout.splitlines()
    direct = dstack.newest_run()
    assert direct["run"] not in (prepare["run"], train["run"])
    assert (direct["workflow"], direct["provider"], direct["status"]) == ("", "python", "done")
    assert direct["artifacts"] == ["checkpoint"]
    assert _checkpoint(dstack, direct["run"])["data"]["made_by"] == prepare["run"]
    assert dstack.record(direct["run"])["deps"] == [prepare["run"]]

    rows = {r["run"]: r for r in dstack.ps()}
    assert {prepare["run"], train["run"], direct["run"]} <= set(rows)
    assert all(rows[r]["backend"] == "local" and not rows[r]["apps"] for r in rows)
    for run in (train["run"], direct["run"]):
        dstack.assert_torn_down(run)


@pytest.mark.timeout(120)
def test_failing_job_exit_code_is_the_commands(dstack: Dstack) -> None:
    proc = dstack("run", "fail", "--tag", "never", expect=3)
    assert "about to fail" in proc.stdout
    row = dstack.newest_run("fail")
    assert (row["status"], row["exit_code"]) == ("failed", 3)
    assert "3" in (row["message"] or "")
    assert "never" not in {t["name"] for t in dstack.json("tags", "list")}
    dstack.assert_torn_down(row["run"])


@pytest.mark.timeout(60)
def test_spec_error_exits_2_naming_file_and_line_and_creates_nothing(
        home: Path, tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", """
        workflows:
          - name: hello
            provider: bash
            commands: ["echo hi"]
            artifact: ["out"]
    """)
    dstack = Dstack(home, project)
    proc = dstack("run", "hello", expect=2)
    assert ".dstack/workflows.yaml:5" in proc.stderr, proc.stderr
    assert "artifact" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert dstack.run_names() == set()
    assert not list(home.glob("state/.pulumi/stacks/**/*.json"))  # no stack at all
    assert not list(home.glob("store/code/*"))  # not even the code was packaged


@pytest.mark.timeout(120)
def test_audit_matches_pulumi_stack_history(dstack: Dstack) -> None:
    dstack("run", "bash", "echo audited")
    run = dstack.newest_run()["run"]
    trail = dstack.json("audit", run)
    assert [(t["kind"], t["result"]) for t in trail] == [("up", "succeeded"),
                                                          ("destroy", "succeeded")]
    up, destroy = trail

    def touched(update: dict) -> set[tuple[str, str, str]]:
        return {(r["op"], r["type"].rsplit(":", 1)[-1], r["name"]) for r in update["resources"]}

    assert touched(up) == {("create", "Folder", "workspace"),
                           ("create", "RunnerProcess", "runner")}
    assert touched(destroy) == {("delete", "Folder", "workspace"),
                                ("delete", "RunnerProcess", "runner")}

    history = json.loads(dstack.pulumi("stack", "history", "--json", "--stack",
                                       f"run-{run}").stdout)
    history.reverse()  # pulumi lists the newest first (two updates may start in one second)
    assert [(h["kind"], h["result"]) for h in history] == [("update", "succeeded"),
                                                            ("destroy", "succeeded")]
    for mine, theirs in zip(trail, history, strict=True):
        assert mine["start"][:19] == theirs["startTime"][:19]
        assert mine["pulumi_changes"] == theirs["resourceChanges"]
    # The stack's two resources plus the stack itself (and the dynamic provider).
    assert history[0]["resourceChanges"].get("create", 0) >= 3
    assert history[1]["resourceChanges"].get("delete", 0) >= 3


@pytest.mark.timeout(180)
def test_the_example_pipeline(tmp_path: Path) -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    project = tmp_path / "examples"
    shutil.copytree(examples, project, ignore=shutil.ignore_patterns("__pycache__"))
    dstack = Dstack(make_home(tmp_path / "dstack-home"), project)

    dstack("run", "prepare")
    prepare = dstack.newest_run("prepare")
    files = dstack.json("artifacts", "list", prepare["run"])["files"]
    assert [f["path"] for f in files] == ["data/train.csv"]
    assert files[0]["size"] > 10_000  # 2000 rows

    proc = dstack("run", "train", "--epoch", "2", "--batch-size", "128")
    assert "epoch 2/2" in proc.stdout
    train = dstack.newest_run("train")
    assert train["status"] == "done"
    model = json.loads(dstack.artifact(train["run"], "checkpoint/model.json").read_text())
    assert model["epoch"] == 2 and model["args"]["batch_size"] == 128
    assert model["accuracy"] > 0.8
    assert dstack.record(train["run"])["deps"] == [prepare["run"]]

"""Runs belong to a project, through the installed `dstack` command on the local backend: two
projects share one dstack home, each `prepare` then `train` (depends-on prepare:latest) gets
its own project's artifacts, `ps` shows a project's runs (`--all-projects` every project's),
and a tag made in one project is usable as `:TAG` from the other."""

from __future__ import annotations

import json
import subprocess
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
    depends-on: ["prepare:latest"]
    provider: python
    file: train.py
    artifacts: ["model"]
"""

VISION = {  # data/rows.json holds a mapping
    "prepare.py": """
        import json, os
        os.makedirs("data", exist_ok=True)
        with open("data/rows.json", "w") as f:
            json.dump({"rows": [1, 2, 3], "made_by": os.environ["DSTACK_RUN"]}, f)
    """,
    "train.py": """
        import json, os
        with open("data/rows.json") as f:
            data = json.load(f)
        os.makedirs("model", exist_ok=True)
        with open("model/seen.json", "w") as f:
            json.dump({"sum": sum(data["rows"]), "made_by": data["made_by"]}, f)
        print("vision trained on", data["made_by"])
    """,
}
NLP = {  # data/rows.json holds a list, next to a vocabulary
    "prepare.py": """
        import json, os
        os.makedirs("data/vocab", exist_ok=True)
        with open("data/rows.json", "w") as f:
            json.dump([os.environ["DSTACK_RUN"], "b", "c"], f)
        with open("data/vocab/words.txt", "w") as f:
            f.write("a b c\\n")
    """,
    "train.py": """
        import json, os
        with open("data/rows.json") as f:
            rows = json.load(f)
        os.makedirs("model", exist_ok=True)
        with open("model/seen.json", "w") as f:
            json.dump({"rows": len(rows), "made_by": rows[0]}, f)
        print("nlp trained on", rows[0])
    """,
    "consume.py": """
        import json, os
        with open("data/rows.json") as f:
            data = json.load(f)
        os.makedirs("result", exist_ok=True)
        with open("result/seen.json", "w") as f:
            json.dump(data, f)
    """,
}
TOKEN = "ghp_n0tAr3alT0ken"
VISION_URL = "https://github.com/acme/vision.git"


def _seen(dstack: Dstack, run: str, rel: str = "model/seen.json") -> dict:
    return json.loads(dstack.artifact(run, rel).read_text())


def _runs(dstack: Dstack, *args: str) -> dict[str, dict]:
    return {r["run"]: r for r in dstack.json("ps", "-a", *args)}


@pytest.mark.timeout(400)
def test_runs_belong_to_their_project(tmp_path: Path) -> None:
    home = make_home(tmp_path / "dstack-home")
    vision_dir = write_project(tmp_path / "vision", WORKFLOWS, VISION)
    subprocess.run(["git", "init", "-q", str(vision_dir)], check=True)
    subprocess.run(["git", "-C", str(vision_dir), "remote", "add", "origin",
                    f"https://alice:{TOKEN}@github.com/acme/vision.git"], check=True)
    nlp_dir = write_project(tmp_path / "nlp", WORKFLOWS, NLP)
    vision, nlp = Dstack(home, vision_dir), Dstack(home, nlp_dir)

    # Each project prepares; nlp's prepare is the newest prepare on the machine.
    vision("run", "prepare")
    nlp("run", "prepare")
    [vision_prep] = _runs(vision)
    [nlp_prep] = _runs(nlp)

    # Each train takes prepare:latest of its own project.
    assert "vision trained on " + vision_prep in vision("run", "train").stdout
    assert "nlp trained on " + nlp_prep in nlp("run", "train").stdout
    vision_train = vision.newest_run("train")["run"]
    nlp_train = nlp.newest_run("train")["run"]
    assert vision.record(vision_train)["deps"] == [vision_prep]
    assert nlp.record(nlp_train)["deps"] == [nlp_prep]
    assert _seen(vision, vision_train) == {"sum": 6, "made_by": vision_prep}
    assert _seen(nlp, nlp_train) == {"rows": 3, "made_by": nlp_prep}

    # The project is recorded in every run: the remote without its credentials, or the folder.
    assert {vision.record(r)["project"] for r in (vision_prep, vision_train)} == {VISION_URL}
    assert {nlp.record(r)["project"] for r in (nlp_prep, nlp_train)} == {str(nlp_dir.resolve())}
    stored = [p.read_text() for p in (home / "store").rglob("*.json")]
    assert stored and not any(TOKEN in text for text in stored)

    # ps shows the project's runs; -C names another project folder; ps RUN any run.
    vision_rows, nlp_rows = _runs(vision), _runs(nlp)
    assert set(vision_rows) == {vision_prep, vision_train}
    assert set(nlp_rows) == {nlp_prep, nlp_train}
    assert {r["project"] for r in vision_rows.values()} == {VISION_URL}
    assert set(_runs(nlp, "-C", str(vision_dir))) == {vision_prep, vision_train}
    assert [r["run"] for r in nlp.ps(vision_train)] == [vision_train]

    # A run written before runs had a project is of the unknown project.
    old = vision.record(vision_prep)
    del old["project"]
    old["name"] = "old-run-1"
    (home / "store" / "runs" / "old-run-1").mkdir()
    (home / "store" / "runs" / "old-run-1" / "run.json").write_text(json.dumps(old))
    assert "old-run-1" not in _runs(vision)

    # --all-projects: every project, with its PROJECT.
    every = _runs(vision, "--all-projects")
    assert set(every) == {vision_prep, vision_train, nlp_prep, nlp_train, "old-run-1"}
    assert every["old-run-1"]["project"] is None
    table = vision("ps", "-a", "--all-projects").stdout.splitlines()
    assert "PROJECT" in table[0].split()
    rows = {line.split()[0]: line for line in table[1:]}
    assert VISION_URL in rows[vision_train] and str(nlp_dir.resolve()) in rows[nlp_prep]
    assert "PROJECT" not in vision("ps", "-a").stdout.splitlines()[0].split()

    # A tag is global: made in vision, used as :TAG from nlp; prepare:TAG stays in nlp.
    vision("tags", "add", "shared", vision_prep)
    runs = vision.run_names()
    proc = nlp("run", "python", "consume.py", "--dep", "prepare:shared", expect=None)
    assert proc.returncode != 0 and "`:shared`" in proc.stderr, proc.stderr
    assert vision.run_names() == runs
    nlp("run", "python", "consume.py", "--dep", ":shared", "--artifact", "result")
    consumer = nlp.newest_run()["run"]
    assert nlp.record(consumer)["deps"] == [vision_prep]
    assert _seen(nlp, consumer, "result/seen.json")["made_by"] == vision_prep

    # prepare:latest in a project without a prepare run says where runs of prepare are.
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = vision("run", "bash", "echo hi", "--dep", "prepare:latest", cwd=empty, expect=None)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "Runs of prepare exist in 3 other projects" in proc.stderr, proc.stderr
    assert vision.run_names() == runs | {consumer}

    # An upload from a project folder belongs to that project.
    (nlp_dir / "extra").mkdir()
    (nlp_dir / "extra" / "x.txt").write_text("x")
    nlp("tags", "add", "uploaded", "--artifact", "extra")
    uploaded = {t["name"]: t["run"] for t in nlp.json("tags", "list")}["uploaded"]
    assert nlp.record(uploaded)["project"] == str(nlp_dir.resolve())
    assert uploaded in _runs(nlp) and uploaded not in _runs(vision)

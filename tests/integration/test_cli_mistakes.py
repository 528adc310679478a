"""The installed `dstack` refuses words that would mean something else than meant, and asks
for `-y` where it cannot ask: a unit as a word of its own, a flag close to one of dstack's,
and a confirmation without a terminal. Genuine script flags and everything after `--` still
reach the job (seen with `--dry-run`). Found before anything is created: a file the run names
that its code will not have, a dependency on a workflow that exists nowhere, a negative GPU
count. None of this needs the Pulumi engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .harness import Dstack, write_project


@pytest.fixture
def dstack(tmp_path: Path) -> Dstack:
    project = write_project(tmp_path / "project", """
        workflows:
          - name: train
            provider: python
            file: train.py
        """, {"train.py": "print('train')\n", "f.txt": "data\n"})
    return Dstack(tmp_path / "home", project)


def _refused(dstack: Dstack, *argv: str) -> str:
    proc = dstack(*argv, expect=2)
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    return proc.stderr


def _job_args(dstack: Dstack, *argv: str) -> list[str]:
    proc = dstack("run", *argv)
    return list(json.loads(proc.stdout)["job"]["args"])


def test_a_unit_as_a_word_of_its_own_is_refused(dstack: Dstack) -> None:
    err = _refused(dstack, "run", "train", "--memory", "16", "GB")
    assert "--memory 16 GB: write the size as one word, 16GB" in err
    err = _refused(dstack, "run", "python", "train.py", "--gpu-memory=24", "gib")
    assert "--gpu-memory 24 gib: write the size as one word, 24gib" in err
    err = _refused(dstack, "run", "train", "--memory", "16")
    assert 'invalid size "16": a size needs a unit' in err and "16GiB" in err
    assert dstack.run_names() == set()


def test_a_flag_close_to_a_dstack_flag_is_refused_unless_after_dashes(dstack: Dstack) -> None:
    for typo, meant in (("--artifacts", "--artifact"), ("--gpus", "--gpu"),
                        ("--detatch", "--detach"), ("--profle", "--profile")):
        err = _refused(dstack, "run", "python", "train.py", "--epochs", "3", typo, "x")
        assert f"{typo} is not a flag of dstack run; did you mean {meant}?" in err
    after = ["--artifacts", "out", "--gpus", "2", "--memory", "16", "GB"]
    assert _job_args(dstack, "train", "--dry-run", "--", *after) == after
    script = ["--epochs", "3", "--seed", "2", "--batch-size", "128", "--lr", "0.1",
              "--data", "d", "--name", "n"]
    assert _job_args(dstack, "python", "train.py", *script, "--dry-run") == script
    assert dstack.run_names() == set()


def test_a_confirmation_without_a_terminal_asks_for_yes(dstack: Dstack) -> None:
    dstack("tags", "add", "v1", "--artifact", "f.txt")
    [run] = dstack.run_names()
    for argv in (["tags", "delete", "v1"], ["rm", run], ["secrets", "delete", "TOKEN"],
                 ["config", "remove", "local"]):
        err = _refused(dstack, *argv)  # stdin is /dev/null
        assert "no terminal to ask" in err and "-y" in err and "interrupted" not in err, err
    assert dstack.run_names() == {run}
    dstack("tags", "delete", "v1", "-y")
    dstack("rm", run, "-y")
    assert dstack.run_names() == set()


# -- found before anything is created ------------------------------------------------------


def _nothing_created(dstack: Dstack) -> None:
    assert dstack.run_names() == set()
    assert dstack.stack_files() == {}
    assert not (dstack.home / "store" / "code").exists()


def test_a_missing_file_is_refused_before_anything_is_created(tmp_path: Path) -> None:
    project = write_project(tmp_path / "project", """
        workflows:
          - name: train
            provider: python
            file: trian.py
          - name: app
            provider: streamlit
            working_dir: web
            target: app.py
        """, {"train.py": "print('train')\n", "web/ap.py": "", ".gitignore": "secret/\n",
              "secret/s.py": ""})
    dstack = Dstack(tmp_path / "home", project)
    err = _refused(dstack, "validate")
    assert ('.dstack/workflows.yaml:4:11: workflows[0].file: "trian.py" does not exist in the '
            'project folder. Did you mean "train.py"?') in err
    assert ('.dstack/workflows.yaml:8:13: workflows[1].target: "app.py" does not exist in '
            'working_dir "web". Did you mean "ap.py"?') in err
    assert f"relative to the project folder ({project})" in err
    for argv in (["run", "train"], ["run", "train", "--dry-run"], ["run", "train", "-d"]):
        err = _refused(dstack, *argv)
        assert '.dstack/workflows.yaml:4:11: workflows[0].file: "trian.py"' in err
        assert "app.py" not in err  # a run checks its own workflow only
    err = _refused(dstack, "run", "python", "x.py", "--epochs", "3")
    assert '`dstack run python x.py`: "x.py" does not exist in the project folder' in err
    err = _refused(dstack, "run", "python", "secret/s.py")
    assert '"secret/s.py" is in the project folder but not in the run\'s code' in err
    _nothing_created(dstack)


def test_a_file_a_dependency_brings_or_a_module_is_not_refused(dstack: Dstack) -> None:
    (dstack.project / "data").mkdir()
    (dstack.project / "data" / "gen.py").write_text("print('gen')\n")
    dstack("tags", "add", "v1", "--artifact", "data")
    (dstack.project / "data" / "gen.py").unlink()
    [upload] = dstack.run_names()
    err = _refused(dstack, "run", "python", "data/gen.py")
    assert '"data/gen.py" does not exist in the project folder' in err
    proc = dstack("run", "python", "data/gen.py", "--dep", ":v1", "--dry-run")
    assert json.loads(proc.stdout)["job"]["argv"] == ["python", "data/gen.py"]
    err = _refused(dstack, "run", "python", "data/other.py", "--dep", ":v1")
    assert ('"data/other.py" does not exist in the project folder nor among the artifacts of '
            "its dependencies") in err
    proc = dstack("run", "python", "-m", "http.server", "--dry-run")
    assert json.loads(proc.stdout)["job"]["argv"] == ["python", "-m"]
    assert dstack.run_names() == {upload} and dstack.stack_files() == {}


def test_a_dependency_on_an_unknown_workflow_is_a_usage_error(tmp_path: Path,
                                                              dstack: Dstack) -> None:
    err = _refused(dstack, "run", "train", "--dep", "trian:latest")
    assert '--dep trian:latest: unknown workflow "trian". Did you mean "train"?' in err
    err = _refused(dstack, "run", "python", "train.py", "--dep", "nosuch:latest")
    assert '--dep nosuch:latest: unknown workflow "nosuch"' in err and "(train)" in err
    assert "Run it first" not in err
    proc = dstack("run", "train", "--dep", "train:latest", expect=1)  # known, never run
    assert "workflow 'train' has no successful run" in proc.stderr
    assert "Run it first: `dstack run train`." in proc.stderr
    other = write_project(tmp_path / "other", """
        workflows:
          - name: train
            depends-on: [nosuch:latest]
            provider: python
            file: train.py
        """, {"train.py": ""})
    for argv in (["validate"], ["run", "train"]):
        err = _refused(Dstack(dstack.home, other), *argv)
        assert '"nosuch:latest" refers to unknown workflow "nosuch"' in err
    _nothing_created(dstack)


def test_a_negative_gpu_count_is_refused_naming_the_flag(dstack: Dstack) -> None:
    for argv in (["python", "train.py"], ["train"]):
        err = _refused(dstack, "run", *argv, "--gpu", "-1")
        assert ("--gpu: resources.gpu.count: a GPU count cannot be negative, got -1; it is 0 "
                "(no GPU) or more") in err
        assert "at least 1" not in err
    assert json.loads(dstack("run", "train", "--gpu", "0", "--dry-run").stdout)["job"][
        "resources"].get("gpu") is None
    _nothing_created(dstack)

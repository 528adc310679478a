"""The installed `dstack` refuses words that would mean something else than meant, and asks
for `-y` where it cannot ask: a unit as a word of its own, a flag close to one of dstack's,
and a confirmation without a terminal. Genuine script flags and everything after `--` still
reach the job (seen with `--dry-run`). None of this needs the Pulumi engine."""

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

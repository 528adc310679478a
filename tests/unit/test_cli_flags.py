"""Command lines that mean something else than the user meant: boolean flags in help and given
a value, flags close to dstack's, a unit as a word of its own, and confirmations without a
terminal. Refusals of single command lines are in the hostile corpus (`data/hostile/cli.yaml`);
these are the cases that need more than one command line or a look at what was passed on."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from dstack.cli import output
from dstack.cli.app import app, main
from dstack.errors import DstackError
from dstack.run.job import Job
from dstack.run.record import RunRecord, Status, run_key
from dstack.store.local import LocalStore

WORKFLOWS = """\
workflows:
  - name: train
    provider: python
    file: train.py
"""


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> Any:
    (tmp_path / ".dstack").mkdir()
    (tmp_path / ".dstack" / "workflows.yaml").write_text(WORKFLOWS)
    (tmp_path / "train.py").write_text("print('train')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path / "home"))

    def run(*argv: str) -> tuple[int, str, str]:
        """The `dstack` entry point in-process: (exit code, stdout, stderr)."""
        monkeypatch.setattr(sys, "argv", ["dstack", *argv])
        output.state.after_dashes = []
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main()
        out, err = capsys.readouterr()
        code = done.value.code
        return (code if isinstance(code, int) else 0 if code is None else 1), out, err

    return run


# -- boolean flags ---------------------------------------------------------------------------


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [path] if path else []
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += _commands(sub, (*path, name))
    return found


@pytest.mark.parametrize("path", _commands(typer.main.get_command(app)), ids=" ".join)
def test_help_shows_boolean_flags_as_plain_flags(path: tuple[str, ...], cli: Any) -> None:
    code, out, err = cli(*path, "--help")
    assert code == 0, err
    assert "Usage: dstack " + " ".join(path) in " ".join(out.split())
    assert "<bool>" not in out, out
    help_line = next(ln for ln in out.splitlines() if "--help" in ln)
    assert "<" not in help_line, help_line


def test_the_root_help_shows_debug_as_a_flag(cli: Any) -> None:
    code, out, _ = cli("--help")
    assert code == 0 and "--debug" in out and "<bool>" not in out


# -- flags that go to the job ----------------------------------------------------------------


@pytest.fixture
def planned(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], list[str]]]:
    """What `dstack run` would plan: (target, the job's words, the words after `--`)."""
    seen: list[tuple[str, list[str], list[str]]] = []

    def plan_run(_ctx: Any, _dir: Path, target: str, positional: list[str], opts: Any,
                 after_dashes: list[str] = ()) -> None:  # type: ignore[assignment]
        seen.append((target, list(positional), list(after_dashes)))
        raise DstackError("planned")

    monkeypatch.setattr("dstack.run.submit.plan_run", plan_run)
    return seen


SCRIPT_FLAGS = ["--epochs", "3", "--epoch", "100", "--seed", "2", "--batch-size", "128",
                "--lr", "0.1", "--data", "data/", "--name", "x", "--log-dir", "logs",
                "--depth", "4", "--output", "out", "--model-name", "m", "--run-name", "r",
                "--project-name", "p", "--mem", "1", "--num-gpus", "2", "--nproc", "2"]


def test_genuine_script_flags_go_to_the_job(cli: Any, planned: list[Any]) -> None:
    code, _, err = cli("run", "python", "train.py", *SCRIPT_FLAGS, "--gpu", "0")
    assert code == 1 and "planned" in err, err
    assert planned == [("python", ["train.py", *SCRIPT_FLAGS], [])]
    planned.clear()
    code, _, err = cli("run", "train", *SCRIPT_FLAGS)
    assert code == 1 and "planned" in err, err
    assert planned == [("train", SCRIPT_FLAGS, [])]


def test_a_word_before_a_boolean_flag_is_still_an_argument(cli: Any,
                                                           planned: list[Any]) -> None:
    assert cli("run", "python", "train.py", "true", "--detach")[0] == 1
    assert planned == [("python", ["train.py", "true"], [])]


def test_after_dashes_everything_goes_to_the_job_unchanged(cli: Any, planned: list[Any]) -> None:
    after = ["--artifacts", "out", "--gpus", "2", "--memory", "16", "GB", "--all", "true"]
    code, _, err = cli("run", "train", "--gpu", "0", "--", *after)
    assert code == 1 and "planned" in err, err
    assert planned == [("train", [], after)]


@pytest.mark.parametrize(("flag", "meant"), [
    ("--artifacts", "--artifact"), ("--deps", "--dep"), ("--detatch", "--detach"),
    ("--gpus", "--gpu"), ("--envs", "--env"), ("--profle", "--profile"),
    ("--memroy", "--memory"), ("--working_dir", "--working-dir"), ("--GPU", "--gpu"),
    ("--interuptible", "--interruptible"), ("--requirement", "--requirements"),
])
def test_a_flag_close_to_a_dstack_flag_is_refused(flag: str, meant: str, cli: Any,
                                                 planned: list[Any]) -> None:
    code, out, err = cli("run", "python", "train.py", "--epochs", "3", flag, "x")
    assert code == 2, err
    assert f"{flag} is not a flag of dstack run; did you mean {meant}?" in err, err
    assert f"-- {flag}" in err  # how to give it to the job anyway
    assert planned == [] and out == ""


# -- confirmations without a terminal --------------------------------------------------------


def _record(home: Path, name: str, status: Status) -> None:
    record = RunRecord(name=name, provider="bash", profile="local", backend="local",
                       job=Job(provider="bash"), stack=f"run-{name}", status=status,
                       torn_down=True)
    LocalStore(home / "store").put_json(run_key(name), record.model_dump(mode="json"))


@pytest.mark.parametrize("argv", [
    ["stop", "brave-otter-1"],
    ["rm", "calm-owl-1"],
    ["tags", "delete", "v1"],
    ["secrets", "delete", "TOKEN"],
    ["config", "remove", "gpu"],
])
def test_a_confirmation_without_a_terminal_asks_for_yes(
        argv: list[str], cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cli("ps")  # the home and its local store
    _record(tmp_path / "home", "brave-otter-1", Status.RUNNING)
    _record(tmp_path / "home", "calm-owl-1", Status.DONE)
    monkeypatch.setattr("dstack.run.tags.load_tag", lambda *_a: None)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # not a terminal, nothing to read
    code, out, err = cli(*argv)
    assert code == 2, err
    assert err.startswith("error: ") and "no terminal" in err, err
    assert "-y" in err and "interrupted" not in err, err
    assert out == ""

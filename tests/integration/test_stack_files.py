"""Stacks created by writing their files (`dstack.stacks.stack_files`), with the real engine:
it must take them as its own, and they must match what `pulumi stack init` writes."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from dstack.stacks import engine as engine_module
from dstack.stacks.engine import Engine
from dstack.stacks.engine_process import OutputFn
from dstack.stacks.local_resources import Folder
from dstack.stacks.stack_files import checkpoint_path, config_path


def _recording(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The engine commands `engine` runs from now on."""
    calls: list[list[str]] = []
    real = engine._run

    def run(args: list[str], stack: str | None = None,
            on_output: OutputFn | None = None) -> str:
        calls.append(args)
        return real(args, stack, on_output)

    monkeypatch.setattr(engine, "_run", run)
    return calls


def _salt(path: Path) -> str:
    [line] = path.read_text().splitlines()
    key, _, value = line.partition(": ")
    assert key == "encryptionsalt"
    return value


def test_after_the_first_stack_init_stacks_are_created_without_the_engine(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(home)
    calls = _recording(engine, monkeypatch)
    engine.up("first", lambda: Folder("f", str(tmp_path / "one")))
    assert [c[:2] for c in calls] == [["stack", "init"], ["up", "--yes"]]
    salts = home / "pulumi" / "stack-salts.json"
    assert stat.S_IMODE(salts.stat().st_mode) == 0o600
    passphrase = (home / "secrets" / "pulumi-passphrase").read_text().strip()
    assert passphrase not in salts.read_text()

    calls.clear()
    _outputs, created = engine.up("second", lambda: Folder("f", str(tmp_path / "two")))
    assert [c[0] for c in calls] == ["up"]  # no `stack init`
    assert (tmp_path / "two").is_dir()
    assert [(c.op, c.name) for c in created] == [("create", "f")]
    assert _salt(config_path(engine.work_dir, "second")) == \
        _salt(config_path(engine.work_dir, "first"))
    assert {s.name for s in engine.list_stacks()} >= {"first", "second"}

    deleted = engine.destroy("second", lambda: Folder("f", str(tmp_path / "two")))
    assert [(c.op, c.name) for c in deleted] == [("delete", "f")]
    assert not (tmp_path / "two").exists()
    assert [(h.kind, h.result) for h in engine.history("second")] == \
        [("update", "succeeded"), ("destroy", "succeeded")]
    engine.remove("second")
    assert "second" not in {s.name for s in engine.list_stacks()}
    engine.destroy("first", lambda: Folder("f", str(tmp_path / "one")))


def test_a_stack_made_of_files_is_what_stack_init_makes(home: Path, tmp_path: Path) -> None:
    engine = Engine(home)
    engine.up("by-engine", lambda: Folder("f", str(tmp_path / "a")))
    engine.destroy("by-engine", lambda: Folder("f", str(tmp_path / "a")))
    engine._run(["stack", "init", "inited", "--secrets-provider", "passphrase"])
    engine.up("written", lambda: Folder("f", str(tmp_path / "b")))
    engine.destroy("written", lambda: Folder("f", str(tmp_path / "b")))
    engine._create("fresh")  # written, never updated: as `stack init` leaves one

    state = engine.file_state
    assert state is not None
    inited = json.loads(checkpoint_path(state, "inited").read_text())
    fresh = json.loads(checkpoint_path(state, "fresh").read_text())
    assert fresh["version"] == inited["version"]
    assert fresh["checkpoint"]["stack"] == inited["checkpoint"]["stack"].replace("inited",
                                                                                 "fresh")
    assert set(fresh["checkpoint"]) <= set(inited["checkpoint"])
    assert config_path(engine.work_dir, "inited").read_text().startswith("encryptionsalt: v1:")
    assert config_path(engine.work_dir, "fresh").read_text().startswith("encryptionsalt: v1:")

    # The engine reads the new stack, and its salt opens secrets with the home's passphrase.
    assert engine.history("fresh") == []
    engine._run(["config", "set", "--secret", "probe", "sealed"], stack="fresh")
    assert "sealed" not in config_path(engine.work_dir, "fresh").read_text()
    assert engine._run(["config", "get", "probe"], stack="fresh").strip() == "sealed"


def test_another_passphrase_gets_its_stacks_from_the_engine(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Engine(home).up("mine", lambda: Folder("f", str(tmp_path / "a")))
    other = tmp_path / "team-passphrase"
    other.write_text("another passphrase\n")
    team = Engine(home, passphrase_file=other)
    calls = _recording(team, monkeypatch)
    team.up("theirs", lambda: Folder("f", str(tmp_path / "b")))
    assert [c[:2] for c in calls] == [["stack", "init"], ["up", "--yes"]]
    assert _salt(config_path(team.work_dir, "theirs")) != \
        _salt(config_path(team.work_dir, "mine"))
    team.destroy("theirs", lambda: Folder("f", str(tmp_path / "b")))
    Engine(home).destroy("mine", lambda: Folder("f", str(tmp_path / "a")))


def test_an_existing_stack_is_left_as_it_is(home: Path, tmp_path: Path) -> None:
    engine = Engine(home)
    engine.up("kept", lambda: Folder("f", str(tmp_path / "a")))
    config = config_path(engine.work_dir, "kept").read_text()
    _outputs, changes = engine.up("kept", lambda: Folder("f", str(tmp_path / "a")))
    assert changes == []  # the same stack, brought up again: its folder is there
    assert config_path(engine.work_dir, "kept").read_text() == config
    assert [(h.kind, h.changes) for h in engine.history("kept")] == \
        [("update", {"create": 2}), ("update", {"same": 2})]
    engine.destroy("kept", lambda: Folder("f", str(tmp_path / "a")))


def test_a_stack_whose_files_cannot_be_written_is_left_to_the_engine(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = Engine(home)
    engine.up("first", lambda: Folder("f", str(tmp_path / "one")))

    def refuse(*_args: object) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine_module, "create_stack", refuse)
    calls = _recording(engine, monkeypatch)
    engine.up("second", lambda: Folder("f", str(tmp_path / "two")))
    assert [c[:2] for c in calls] == [["stack", "init"], ["up", "--yes"]]
    assert (tmp_path / "two").is_dir()
    engine.destroy("second", lambda: Folder("f", str(tmp_path / "two")))
    engine.destroy("first", lambda: Folder("f", str(tmp_path / "one")))

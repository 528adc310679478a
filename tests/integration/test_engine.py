"""The real Pulumi engine with the file backend: a stack of one Python dynamic resource."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pulumi
import pytest

from dstack.errors import NotFoundError
from dstack.home import default_home
from dstack.procs import process_alive
from dstack.stacks import engine as engine_module
from dstack.stacks.engine import PROJECT_YAML, Engine
from dstack.stacks.engine_install import LAUNCHER, PULUMI_VERSION, engine_root, find_engine
from dstack.stacks.local_resources import Folder, RunnerProcess

from .harness import Dstack, write_project

REPO = Path(__file__).resolve().parents[2]


def test_dynamic_folder_up_destroy_history(home: Path, tmp_path: Path) -> None:
    target = tmp_path / "made-by-pulumi"
    engine = Engine(home)

    def program() -> None:
        Folder("folder", str(target))

    _outputs, created = engine.up("engine-check", program)
    assert target.is_dir()
    assert [(c.op, c.name) for c in created] == [("create", "folder")]
    [info] = [s for s in engine.list_stacks() if s.name == "engine-check"]
    assert info.resource_count >= 2  # the stack itself, its dynamic provider, the folder

    deleted = engine.destroy("engine-check", program)
    assert not target.exists()
    assert [(c.op, c.name) for c in deleted] == [("delete", "folder")]

    history = engine.history("engine-check")
    assert [(h.kind, h.result) for h in history] == [("update", "succeeded"),
                                                     ("destroy", "succeeded")]
    # Pulumi counts the stack resource itself beside the folder.
    assert history[0].changes.get("create") == 2
    assert history[1].changes.get("delete") == 2
    assert all(h.end for h in history)


def test_engine_files_are_private_and_state_is_local(home: Path, tmp_path: Path) -> None:
    engine = Engine(home)
    engine.up("privacy-check", lambda: Folder("f", str(tmp_path / "x")))
    passphrase = home / "secrets" / "pulumi-passphrase"
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "state").stat().st_mode) == 0o700
    assert engine.backend_url == f"file://{home / 'state'}?metadata=skip"
    secret = passphrase.read_text().strip()
    state_files = list((home / "state").rglob("*.json"))
    assert state_files
    assert all(secret not in p.read_text() for p in state_files)
    engine.destroy("privacy-check", lambda: Folder("f", str(tmp_path / "x")))


def test_checkpoints_are_replaced_whole_with_no_sidecar(home: Path, tmp_path: Path) -> None:
    # A sidecar rewritten in place is what another engine reading the stack at that moment
    # failed on ("failed to load checkpoint: EOF"): the file state writes none.
    engine = Engine(home)
    engine.up("sidecar-check", lambda: Folder("f", str(tmp_path / "x")))
    engine.destroy("sidecar-check", lambda: Folder("f", str(tmp_path / "x")))
    written = {p.name for p in (home / "state" / ".pulumi").rglob("*") if p.is_file()}
    assert "sidecar-check.json" in written
    assert any(name.startswith("sidecar-check-") for name in written)  # its history
    assert [name for name in written if name.endswith(".attrs")] == []
    assert [name for name in written if name.endswith(".tmp")] == []


def test_unknown_stack_is_a_dstack_error(home: Path) -> None:
    with pytest.raises(NotFoundError):
        Engine(home).history("no-such-stack")


def test_repository_pulumi_yaml_is_the_engine_project() -> None:
    assert (REPO / "Pulumi.yaml").read_text() == PROJECT_YAML


@pytest.mark.engine
def test_a_home_without_an_engine_uses_the_default_homes(tmp_path: Path) -> None:
    # `make setup` installs the engine in ~/.dstack; a DSTACK_HOME set later must find it
    # rather than say "run make engine" (and build a second copy).
    if find_engine(default_home()) is None:
        pytest.skip(f"no engine installed in the default home {default_home()}")
    project = write_project(tmp_path / "project", "workflows: []\n",
                            {"hi.py": "print('hi from a new home')\n"})
    dstack = Dstack(tmp_path / "new-home", project)
    assert not (dstack.home / "engine").exists()
    proc = dstack("run", "python", "hi.py")
    assert proc.stdout == "hi from a new home\n"
    assert not (dstack.home / "engine").exists()  # nothing was installed or built there
    engine = subprocess.run([sys.executable, "-m", "dstack.stacks.engine_install"],
                            env={**dstack.env()}, capture_output=True, text=True, timeout=120)
    assert engine.returncode == 0, engine.stderr
    assert "using the engine of" in engine.stderr
    assert (dstack.home / "engine" / PULUMI_VERSION).resolve() == \
        engine_root(default_home()).resolve()


SDK_LAUNCHER = '#!/bin/sh\nexec "${PULUMI_PYTHON_CMD:-python3}" -u -m pulumi.dynamic "$@"\n'
"""What Pulumi's own launcher runs: the SDK's host, which unpickles `local_resources`."""


def _own_engine(home: Path) -> Path:
    """Give `home` an engine folder of its own (the installed engine, linked) so that its
    dynamic-provider launcher can be swapped; its launcher path."""
    installed = find_engine(default_home())
    assert installed is not None
    link = home / "engine" / PULUMI_VERSION
    link.unlink()
    bin_dir = link / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "pulumi").symlink_to(installed / "pulumi")
    (bin_dir / ".installed").write_text(PULUMI_VERSION + "\n")
    return bin_dir / "pulumi-resource-pulumi-python"


def _use(launcher: Path, text: str) -> None:
    launcher.write_text(text)
    launcher.chmod(0o755)


def _runner_program(workdir: Path) -> Callable[[], None]:
    def program() -> None:
        folder = Folder("workspace", str(workdir))
        runner = RunnerProcess("runner", folder.id, "#!/bin/bash\nexec sleep 300\n",
                               opts=pulumi.ResourceOptions(depends_on=[folder]))
        pulumi.export("pid", runner.pid)
        pulumi.export("start_ticks", runner.start_ticks)
    return program


def test_the_engine_starts_dstacks_provider_host(home: Path, tmp_path: Path) -> None:
    installed = find_engine(home)
    assert installed is not None
    assert (installed / "pulumi-resource-pulumi-python").read_text() == LAUNCHER
    workdir = tmp_path / "run-workdir"
    engine = Engine(home)
    program = _runner_program(workdir)
    outputs, created = engine.up("host-check", program)
    assert sorted(c.name for c in created) == ["runner", "workspace"]
    pid, ticks = outputs["pid"], outputs["start_ticks"]
    assert isinstance(pid, int) and isinstance(ticks, int)
    assert process_alive(pid, ticks)
    assert (workdir / "bootstrap.sh").stat().st_mode & 0o777 == 0o700
    deleted = engine.destroy("host-check", program)
    assert sorted(c.name for c in deleted) == ["runner", "workspace"]
    assert not process_alive(pid, ticks)
    assert not workdir.exists()


@pytest.mark.parametrize("first,second", [(SDK_LAUNCHER, LAUNCHER), (LAUNCHER, SDK_LAUNCHER)],
                         ids=["sdk-then-dstack", "dstack-then-sdk"])
def test_either_host_tears_down_what_the_other_made(home: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    first: str, second: str) -> None:
    # A home upgraded between a run's `up` and its `destroy` (or an engine whose launcher is
    # Pulumi's own, and cannot be written) still ends the run: both hosts serve the same
    # resources.
    monkeypatch.setattr(engine_module, "write_launcher", lambda _bin_dir: None)
    launcher = _own_engine(home)
    workdir = tmp_path / "run-workdir"
    engine = Engine(home)
    program = _runner_program(workdir)
    _use(launcher, first)
    outputs, _ = engine.up("mixed-hosts", program)
    pid, ticks = int(str(outputs["pid"])), int(str(outputs["start_ticks"]))
    assert process_alive(pid, ticks)
    _use(launcher, second)
    engine.destroy("mixed-hosts", program)
    assert not process_alive(pid, ticks)
    assert not workdir.exists()
    assert [(h.kind, h.result) for h in engine.history("mixed-hosts")] == [
        ("update", "succeeded"), ("destroy", "succeeded")]


def test_an_engine_with_pulumis_launcher_gets_dstacks_at_the_first_command(
        home: Path, tmp_path: Path) -> None:
    # A dstack upgraded by pip alone (no `make`) still has the old launcher beside its engine.
    launcher = _own_engine(home)
    _use(launcher, SDK_LAUNCHER)
    engine = Engine(home)
    engine.up("relaunched", lambda: Folder("f", str(tmp_path / "made")))
    assert launcher.read_text() == LAUNCHER
    assert launcher.stat().st_mode & 0o111
    assert (tmp_path / "made").is_dir()
    engine.destroy("relaunched", lambda: Folder("f", str(tmp_path / "made")))
    assert not (tmp_path / "made").exists()


def test_the_engine_module_leaves_pulumi_to_the_engines_start() -> None:
    # Importing pulumi takes 0.1 s: the program's runtime imports it when the engine first
    # calls it (the engine is starting meanwhile), not the module nor a backend's program.
    code = ("import sys, dstack.stacks.engine, dstack.stacks.local\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pulumi'))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def _sdk_read_events(path: Path) -> tuple[dict[str, object], list[tuple[str, str, str]]]:
    """The event log read through the SDK's own event types (what `_read_events` did)."""
    from pulumi.automation.events import EngineEvent, OpType

    ops = {OpType.CREATE: "create", OpType.DELETE: "delete", OpType.UPDATE: "update",
           OpType.REPLACE: "replace", OpType.CREATE_REPLACEMENT: "create",
           OpType.DELETE_REPLACED: "delete"}
    outputs: dict[str, object] = {}
    changes = []
    for line in path.read_text().splitlines():
        out = EngineEvent.from_json(json.loads(line)).res_outputs_event if line else None
        meta = out.metadata if out is not None else None
        if meta is None:
            continue
        if meta.type == "pulumi:pulumi:Stack" and meta.new is not None:
            outputs = dict(meta.new.outputs or {})
        op = ops.get(meta.op)
        if op and not meta.type.startswith(("pulumi:pulumi:", "pulumi:providers:")):
            changes.append((op, meta.type, meta.urn.rsplit("::", 1)[-1]))
    return outputs, changes


def test_an_updates_event_log_is_read_as_the_sdk_reads_it(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kept: list[Path] = []
    real = engine_module._read_events

    def keep(path: Path) -> tuple[dict[str, object], list[object]]:
        copy = tmp_path / f"events-{len(kept)}.jsonl"
        copy.write_bytes(path.read_bytes())
        kept.append(copy)
        return real(path)

    monkeypatch.setattr(engine_module, "_read_events", keep)
    engine = Engine(home)
    program = _runner_program(tmp_path / "events-workdir")
    engine.up("events-check", program)
    engine.up("events-check", lambda: Folder("workspace", str(tmp_path / "moved")))  # replace
    engine.destroy("events-check", program)
    seen = set()
    for path in kept:
        outputs, changes = real(path)
        assert (outputs, [(c.op, c.type, c.name) for c in changes]) == _sdk_read_events(path)
        seen |= {c.op for c in changes}
    assert {"create", "delete"} <= seen and len(kept) == 3

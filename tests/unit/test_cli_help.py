"""`dstack run NAME --help` for providers and workflows, and `dstack run --help`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dstack.cli import provider_help
from dstack.cli.app import main
from dstack.spec.registry import PROVIDERS, provider_params

WORKFLOWS = """\
workflows:
  - name: train
    help: Trains the model on the prepared data.
    provider: python
    file: train.py
    args: --epochs 3
  - name: app
    provider: streamlit
    target: app.py
"""


def dstack(argv: list[str], capsys: pytest.CaptureFixture[str],
           monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """Run the `dstack` entry point in-process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["dstack", *argv])
    with pytest.raises(SystemExit) as done:
        main()
    out, err = capsys.readouterr()
    return int(done.value.code or 0), out, err


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / ".dstack").mkdir()
    (tmp_path / ".dstack" / "workflows.yaml").write_text(WORKFLOWS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path / "home"))
    return tmp_path


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_provider_help_lists_every_field_and_the_run_options(
        name: str, project: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, err = dstack(["run", name, "--help"], capsys, monkeypatch)
    assert code == 0, err
    assert out.startswith(f"Usage: {provider_help.cli_form(name, provider_params(name))}")
    for field, info in provider_params(name).model_fields.items():
        line = next(ln for ln in out.splitlines() if ln.startswith(info.alias or field))
        assert ("required" if info.is_required() else "default: ") in line
        assert (info.description or "")[:30] in line
    for option in ("--profile", "--dep", "--artifact", "--gpu", "--env", "--dry-run",
                   "-d, --detach", "-C, --project"):
        assert option in out
    assert not list((project / "home").glob("*"))  # help creates nothing


def test_docker_help_shows_types_defaults_and_the_command_line(
        project: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = dstack(["run", "docker", "-h"], capsys, monkeypatch)
    assert code == 0
    assert out.startswith("Usage: dstack run docker IMAGE [-- COMMAND...]")
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "text" in rows["image"] and "required" in rows["image"]
    assert "list of text" in rows["commands"] and "default: []" in rows["commands"]
    assert "text or list of text" in rows["entrypoint"] and "default: null" in rows["entrypoint"]
    assert "integer" in rows["ports"] and "default: 0" in rows["ports"]
    assert "mapping: username, password" in rows["registry_auth"]
    assert "Every workflow also has: name, help, provider, depends-on" in out


def test_workflow_help_shows_its_provider_fields_and_values(
        project: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = dstack(["run", "train", "--help"], capsys, monkeypatch)
    assert code == 0
    assert out.startswith("Usage: dstack run train [dstack run OPTIONS] [ARGS]...")
    assert "Workflow train (" in out and "workflows.yaml" in out
    assert "run by the python provider. Trains the model on the prepared data." in out
    file_row = next(ln for ln in out.splitlines() if ln.startswith("file "))
    assert file_row.rstrip().endswith('"train.py"')
    args_row = next(ln for ln in out.splitlines() if ln.startswith("args "))
    assert args_row.rstrip().endswith('["--epochs", "3"]')
    assert "--profile" in out


def test_options_before_the_name_and_the_project_folder(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, _ = dstack(["--debug", "run", "--profile", "x", "--gpu=1", "-C", str(project),
                           "train", "-h"], capsys, monkeypatch)
    assert code == 0 and out.startswith("Usage: dstack run train ")
    code, out, _ = dstack(["run", "--profile", "code", "lab", "--help"], capsys, monkeypatch)
    assert code == 0 and out.startswith("Usage: dstack run lab ")


def test_run_help_keeps_clicks_help_and_lists_providers_and_workflows(
        project: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = dstack(["run", "--help"], capsys, monkeypatch)
    assert code == 0
    assert "Usage: dstack run [OPTIONS]" in out and "--dry-run" in out  # click's own help
    listed = out[out.index("Providers"):]
    for name in PROVIDERS:
        assert f"dstack run {provider_help.cli_form(name, provider_params(name))[11:]}" in listed
    assert "train" in listed and "Trains the model on the prepared data." in listed


def test_unknown_names_get_did_you_mean(project: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = dstack(["run", "pyhton", "--help"], capsys, monkeypatch)
    assert code == 2 and 'Did you mean "python"?' in err
    code, _, err = dstack(["run", "trian", "--help"], capsys, monkeypatch)
    assert code == 2 and 'Did you mean "train"?' in err


def test_a_broken_workflow_file_does_not_hide_provider_help(
        project: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    (project / ".dstack" / "workflows.yaml").write_text("workflows:\n  - name: x\n    bad: 1\n")
    code, out, _ = dstack(["run", "bash", "--help"], capsys, monkeypatch)
    assert code == 0 and out.startswith("Usage: dstack run bash COMMAND...")
    code, _, err = dstack(["run", "x", "--help"], capsys, monkeypatch)
    assert code == 2 and "workflows.yaml" in err


def test_only_run_with_a_help_flag_is_help() -> None:
    assert provider_help.wants_run_help(["run", "python", "--help"])
    assert provider_help.wants_run_help(["--debug", "run", "-h"])
    assert not provider_help.wants_run_help(["run", "python", "x.py"])  # `-- --help` is cut off
    assert not provider_help.wants_run_help(["ps", "--help"])
    assert not provider_help.wants_run_help(["logs", "run", "--help"])


def test_command_line_forms() -> None:
    forms = {name: provider_help.cli_form(name, provider_params(name)) for name in PROVIDERS}
    assert forms == {
        "python": "dstack run python FILE [ARGS]...",
        "bash": "dstack run bash COMMAND...",
        "docker": "dstack run docker IMAGE [-- COMMAND...]",
        "streamlit": "dstack run streamlit app.py [ARGS]...",
        "gradio": "dstack run gradio app.py [ARGS]...",
        "fastapi": "dstack run fastapi main:app",
        "lab": "dstack run lab [ARGS]...",
        "code": "dstack run code [ARGS]...",
        "notebook": "dstack run notebook [ARGS]...",
    }


def test_type_words() -> None:
    defs = {"Auth": {"properties": {"user": {}, "key": {}}}}
    assert provider_help.type_text({"type": "string"}, defs) == "text"
    assert provider_help.type_text({"anyOf": [{"type": "integer"}, {"type": "null"}]},
                                   defs) == "integer"
    assert provider_help.type_text({"type": ["string", "number", "boolean"]},
                                   defs) == "text or number or true/false"
    assert provider_help.type_text({"type": "object", "additionalProperties": {
        "type": "string"}}, defs) == "mapping of text"
    assert provider_help.type_text({"$ref": "#/$defs/Auth"}, defs) == "mapping: user, key"

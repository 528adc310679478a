"""Files a workflow names, checked before anything is created (`dstack.spec.files`); GPU counts
said the same way in a mapping, a number and on the command line; a dependency on a workflow
that exists nowhere (`dstack.run.tags.unknown_workflow`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dstack.errors import SpecError
from dstack.run.job import ArtifactPath, Job
from dstack.run.record import RunRecord, Status, run_key
from dstack.run.tags import unknown_workflow
from dstack.spec.files import (
    CodeFiles,
    MissingFile,
    check_workflow_files,
    declared,
    declared_artifacts,
    fetched,
    missing_files,
)
from dstack.spec.loader import load_workflows
from dstack.spec.models import Workflow
from dstack.spec.validation import validate_workflow
from dstack.store.local import LocalStore

CODE = CodeFiles(["train.py", "app.py", "src/main.py", "src/util/helpers.py", "reqs.txt",
                  "pkg/__main__.py", "linked"], links=["linked"])


def wf(**fields: Any) -> Workflow:
    return validate_workflow({"provider": "python", "file": "train.py", **fields})


def missing(workflow: Workflow, artifacts: list[str] | None = None,
            on_disk: bool = False) -> list[MissingFile]:
    return missing_files(workflow, CODE, declared(artifacts or []), lambda _path: on_disk)


def nothing_brought(_path: str) -> bool:
    return False


# -- which paths are checked, and against what -------------------------------------------


def test_files_in_the_code_are_not_missing() -> None:
    assert missing(wf()) == []
    assert missing(wf(requirements="reqs.txt")) == []
    assert missing(wf(file="main.py", working_dir="src")) == []
    assert missing(wf(file="./src/../train.py")) == []
    assert missing(wf(file="pkg")) == []  # python runs a folder's __main__.py
    assert missing(wf(file="linked/inside.py")) == []  # a link's target is not looked into
    assert missing(wf(working_dir=".")) == []


def test_a_typo_is_missing_with_the_close_file() -> None:
    [found] = missing(wf(file="trian.py"))
    assert (found.field, found.value, found.path) == ("file", "trian.py", "trian.py")
    assert found.describe() == ('"trian.py" does not exist in the project folder. '
                                'Did you mean "train.py"?')


def test_paths_are_relative_to_the_working_dir() -> None:
    [found] = missing(wf(file="mian.py", working_dir="src"))
    assert found.path == "src/mian.py" and found.suggestion == "main.py"
    assert found.describe() == ('"mian.py" does not exist in working_dir "src". '
                                'Did you mean "main.py"?')
    [found] = missing(wf(file="app.py", working_dir="src"))  # at the root, not in src/
    assert found.path == "src/app.py" and found.suggestion is None


def test_the_suggestion_is_a_close_stem_or_the_same_name_elsewhere() -> None:
    assert missing(wf(file="x.py"))[0].suggestion is None  # not "app.py": the stems differ
    assert missing(wf(file="main.py"))[0].suggestion == "src/main.py"
    assert missing(wf(file="src/util/helper.py"))[0].suggestion == "src/util/helpers.py"
    assert CodeFiles(["train"]).near("trian.py") == "train"
    assert CodeFiles(["main.py"]).near("train.py") is None
    assert CodeFiles(["a/x.py", "b/c/x.py"]).near("x.py", within="b") == "b/c/x.py"


def test_what_is_not_a_path_of_the_project_is_not_checked() -> None:
    assert missing(wf(file="-m", args="http.server")) == []  # a module
    assert missing(wf(file="/opt/tools/run.py")) == []
    assert missing(wf(file="~/run.py")) == []
    assert missing(wf(file="../elsewhere/run.py")) == []


def test_a_file_on_disk_but_not_packaged_says_so() -> None:
    [found] = missing(wf(file="secret/run.py"), on_disk=True)
    assert found.on_disk
    assert "is in the project folder but not in the run's code" in found.describe()
    assert ".dstackignore" in found.describe()


def test_setup_lines_may_make_the_file_but_not_the_requirements() -> None:
    workflow = wf(file="gen.py", requirements="missing.txt", setup=["python make_gen.py"])
    assert [m.field for m in missing(workflow)] == ["requirements"]
    assert [m.field for m in missing(wf(file="gen.py", requirements="missing.txt"))] == \
        ["file", "requirements"]


def test_a_file_a_dependency_brings_is_not_missing() -> None:
    assert missing(wf(file="data/gen.py"), artifacts=["data"]) == []
    assert missing(wf(file="data"), artifacts=["data/gen.py"]) == []
    assert missing(wf(file="gen.py"), artifacts=["."]) == []
    assert [m.path for m in missing(wf(file="data2/gen.py"), artifacts=["data"])] == \
        ["data2/gen.py"]
    assert missing_files(wf(file="any.py"), CODE, None, lambda _p: False) == []  # unknown


def test_a_run_asks_its_dependencies_artifact_files_once_and_only_when_needed() -> None:
    listed: list[str] = []
    keys = {"runs/a-1/artifacts/": ["runs/a-1/artifacts/out/gen.py"],
            "runs/b-1/artifacts/": ["runs/b-1/artifacts/model/w.bin"]}

    def list_keys(prefix: str) -> list[str]:
        listed.append(prefix)
        return keys[prefix]

    brings = fetched(list_keys, list(keys))
    workflow = wf(depends_on=["a:latest", "b:latest"])
    assert missing_files(workflow, CODE, brings, lambda _p: False) == [] and listed == []
    for path in ("out/gen.py", "out", "model/w.bin"):
        assert missing_files(wf(file=path, depends_on=["a:latest"]), CODE, brings,
                             lambda _p: False) == []
    [found] = missing_files(wf(file="out/gen2.py", depends_on=["a:latest"]), CODE, brings,
                            lambda _p: False)
    assert found.describe() == ('"out/gen2.py" does not exist in the project folder nor '
                                "among the artifacts of its dependencies")
    assert listed == list(keys)  # listed once


def test_only_providers_that_name_files_are_checked() -> None:
    streamlit = validate_workflow({"provider": "streamlit", "target": "ap.py"})
    assert [m.suggestion for m in missing_files(streamlit, CODE, nothing_brought,
                                                nothing_brought)] == ["app.py"]
    url = validate_workflow({"provider": "streamlit", "target": "https://x.org/app.py"})
    assert missing_files(url, CODE, nothing_brought, nothing_brought) == []
    gradio = validate_workflow({"provider": "gradio", "file": "demo.py"})
    assert [m.field for m in missing_files(gradio, CODE, nothing_brought,
                                           nothing_brought)] == ["file"]
    for other in ({"provider": "fastapi", "app": "nosuch:app"},
                  {"provider": "bash", "commands": ["python nosuch.py"]}):
        assert missing_files(validate_workflow(other), CODE, nothing_brought,
                             nothing_brought) == []


# -- a project's workflow files ------------------------------------------------------------


def project(tmp_path: Path, workflows: str, files: dict[str, str]) -> Path:
    (tmp_path / ".dstack").mkdir()
    (tmp_path / ".dstack" / "workflows.yaml").write_text(workflows)
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


WORKFLOWS = """\
workflows:
  - name: prepare
    provider: python
    file: prepare.py
    artifacts: [data]
  - name: train
    depends-on: [prepare:latest]
    provider: python
    file: data/train.py
    requirements: requirments.txt
  - name: app
    provider: streamlit
    target: ap.py
"""


def test_validate_names_each_missing_file_with_its_line(tmp_path: Path) -> None:
    root = project(tmp_path, WORKFLOWS, {"prepare.py": "", "requirements.txt": "",
                                         "app.py": ""})
    with pytest.raises(SpecError) as caught:
        check_workflow_files(root, load_workflows(root))
    lines = caught.value.message.splitlines()
    assert lines == [
        '.dstack/workflows.yaml:10:19: workflows[1].requirements: "requirments.txt" does not '
        'exist in the project folder nor among the artifacts of its dependencies. Did you mean '
        '"requirements.txt"?',
        '.dstack/workflows.yaml:13:13: workflows[2].target: "ap.py" does not exist in the '
        'project folder. Did you mean "app.py"?',
    ]  # data/train.py comes with prepare's artifacts
    assert caught.value.exit_code == 2
    assert caught.value.hint is not None and str(root) in caught.value.hint


def test_validate_passes_when_every_file_is_there_or_may_come(tmp_path: Path) -> None:
    text = WORKFLOWS.replace("prepare:latest", '":v1"').replace("requirments", "requirements")
    root = project(tmp_path, text, {"prepare.py": "", "requirements.txt": "", "ap.py": ""})
    check_workflow_files(root, load_workflows(root))
    assert declared_artifacts(load_workflows(root), load_workflows(root)["train"]) is None


def test_declared_artifacts_are_relative_to_the_project(tmp_path: Path) -> None:
    text = WORKFLOWS.replace("    artifacts: [data]", "    artifacts: [data]\n"
                                                     "    working_dir: src")
    root = project(tmp_path, text, {})
    workflows = load_workflows(root)
    assert declared_artifacts(workflows, workflows["train"]) == ["src/data"]
    assert declared_artifacts(workflows, workflows["prepare"]) == []


# -- GPU counts ------------------------------------------------------------------------------


@pytest.mark.parametrize(("gpu", "fragment"), [
    (-1, "a GPU count cannot be negative, got -1; it is 0 (no GPU) or more"),
    ({"count": -1}, "a GPU count cannot be negative, got -1; it is 0 (no GPU) or more"),
    ({"count": 0}, "must be at least 1 in a mapping, got the number 0; for no GPU write "
                   "`gpu: 0`"),
])
def test_a_gpu_count_below_one_says_what_counts_mean(gpu: object, fragment: str) -> None:
    with pytest.raises(SpecError) as caught:
        wf(resources={"gpu": gpu})
    assert fragment in caught.value.message and "resources.gpu" in caught.value.message
    assert wf(resources={"gpu": 0}).resources.gpu is None


# -- dependencies on workflows that exist nowhere --------------------------------------------


def test_an_unknown_workflow_is_neither_defined_nor_recorded(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    record = RunRecord(name="old-run-1", workflow="legacy", provider="bash",
                       profile="local", backend="local", job=Job(provider="bash", artifacts=[
                           ArtifactPath(path="out")]), stack="run-old-run-1",
                       status=Status.FAILED)
    store.put_json(run_key(record.name), record.model_dump(mode="json"))
    assert unknown_workflow(store, "train", ["train", "prepare"]) is None
    assert unknown_workflow(store, "legacy", ["train"]) is None  # it has a (failed) run
    error = unknown_workflow(store, "trian", ["train", "prepare"])
    assert error is not None and error.exit_code == 2
    assert error.message == 'unknown workflow "trian". Did you mean "train"?'
    assert error.hint is not None and "(train, prepare)" in error.hint
    error = unknown_workflow(store, "legacyy", [])
    assert error is not None and 'Did you mean "legacy"?' in error.message

"""The workflow spec: models, the file loader, its error messages and the JSON Schema."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from dstack.errors import SpecError, UsageError
from dstack.spec import loader as spec_loader
from dstack.spec import validation as spec_validation
from dstack.spec.loader import MAX_FILE_BYTES, Workflows, load_workflows
from dstack.spec.models import (
    ArtifactSpec,
    DepRef,
    GpuSpec,
    Resources,
    Workflow,
    workflow_file_schema,
    workflow_model,
)
from dstack.spec.problems import MAX_PROBLEMS
from dstack.spec.registry import PROVIDERS, provider_params
from dstack.spec.validation import validate_workflow

EXAMPLE = Path(__file__).parent / "data" / "spec" / "example"
FILE = ".dstack/workflows.yaml"
GB = 1000**3


def project(tmp_path: Path, text: str | bytes, name: str = "workflows.yaml") -> Path:
    """A project folder whose `.dstack/<name>` holds `text`."""
    path = tmp_path / ".dstack" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return tmp_path


def load_error(tmp_path: Path, text: str | bytes) -> str:
    """The message of the SpecError loading `text` raises; checks it is a usage error."""
    with pytest.raises(SpecError) as caught:
        load_workflows(project(tmp_path, text))
    assert caught.value.exit_code == 2
    return caught.value.message


def check(data: dict[str, Any]) -> str:
    """The message of the SpecError that validating `data` raises."""
    with pytest.raises(SpecError) as caught:
        validate_workflow(data)
    assert caught.value.exit_code == 2
    return caught.value.message


def python(**fields: Any) -> dict[str, Any]:
    return {"name": "w", "provider": "python", "file": "train.py", **fields}


# -- the example file ------------------------------------------------------------------------


def test_the_example_file_loads_with_its_values() -> None:
    workflows = load_workflows(EXAMPLE)
    assert list(workflows) == ["prepare", "train", "app"]
    prepare, train, app = workflows["prepare"], workflows["train"], workflows["app"]
    assert all(isinstance(w, Workflow) for w in workflows.values())
    assert (prepare.provider, prepare.file, prepare.args) == ("python", "prepare.py", [])
    assert prepare.artifacts == [ArtifactSpec(path="data", mount=False)]
    assert prepare.depends_on == []
    assert prepare.resources == Resources()
    assert train.depends_on == [DepRef("prepare", "latest")]
    assert train.depends_on[0].is_latest
    assert train.artifacts == [ArtifactSpec(path="checkpoint")]
    assert train.resources.gpu == GpuSpec(count=4)
    assert train.resources.gpu.name is None and train.resources.gpu.memory_bytes is None
    assert train.resources.cpu is None and train.resources.interruptible is False
    assert (app.provider, app.target, app.args) == ("streamlit", "app.py", [])
    assert app.depends_on == [DepRef("train", "latest")]
    assert [workflows.location(n).line for n in workflows] == [2, 6, 14]
    assert str(workflows.location("train")) == f"{FILE}:6"
    assert workflows.files == [EXAMPLE / FILE]


def test_no_workflow_files_means_no_workflows(tmp_path: Path) -> None:
    assert len(load_workflows(tmp_path)) == 0
    (tmp_path / ".dstack").mkdir()
    assert dict(load_workflows(tmp_path)) == {}
    assert len(load_workflows(tmp_path / "missing")) == 0


def test_workflows_folder_files_are_loaded_after_the_main_file(tmp_path: Path) -> None:
    project(tmp_path, "workflows:\n  - {name: a, provider: bash, commands: [ls]}\n")
    project(
        tmp_path, "workflows:\n  - {name: c, provider: bash, commands: [ls]}\n", "workflows/2.yml"
    )
    project(
        tmp_path,
        "workflows:\n  - name: b\n    provider: bash\n    commands: [ls]\n"
        "    depends-on: [c:latest]\n",
        "workflows/1.yaml",
    )
    project(tmp_path, "not: yaml: [", "workflows/notes.txt")
    workflows = load_workflows(tmp_path)
    assert list(workflows) == ["a", "b", "c"]
    assert str(workflows.location("b")) == ".dstack/workflows/1.yaml:2"


def test_require_suggests_the_nearest_workflow() -> None:
    workflows = load_workflows(EXAMPLE)
    assert workflows.require("train").name == "train"
    with pytest.raises(
        UsageError, match=re.escape('unknown workflow "trian". Did you mean "train"?')
    ):
        workflows.require("trian")
    assert Workflows().get("x") is None


# -- one workflow: common fields ------------------------------------------------------------


def test_validate_workflow_accepts_a_command_line_form_without_a_name() -> None:
    wf = validate_workflow({"provider": "python", "file": "train.py", "args": "--epoch 100"})
    assert wf.name is None and wf.args == ["--epoch", "100"]
    assert type(wf) is workflow_model("python")


def test_the_models_stand_below_validation_and_loader() -> None:
    # No re-export and no cycle: the models import neither of the modules that use them.
    code = ("import sys\nimport dstack.spec.models as m\n"
            "assert 'dstack.spec.loader' not in sys.modules\n"
            "assert 'dstack.spec.validation' not in sys.modules\n"
            "assert not hasattr(m, 'validate_workflow')\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_workflow_survives_a_dump_and_reload() -> None:
    wf = validate_workflow(
        python(
            **{
                "depends-on": ["prepare:latest", ":v1"],
                "artifacts": ["a", {"path": "b", "mount": True}],
                "resources": {
                    "gpu": {"count": 2, "name": "A100", "memory": "40GB"},
                    "memory": "64GB",
                },
                "environment": {"A": 1},
                "env": ["B=$HOME"],
            }
        )
    )
    dumped = wf.model_dump(mode="json", by_alias=True)
    assert dumped["depends-on"] == ["prepare:latest", ":v1"]
    assert json.loads(json.dumps(dumped)) == dumped
    assert validate_workflow(dumped) == wf


@pytest.mark.parametrize(
    ("text", "workflow", "tag"),
    [
        ("prepare:latest", "prepare", "latest"),
        ("train:v1.2", "train", "v1.2"),
        (":best", None, "best"),
    ],
)
def test_depends_on_entries_are_parsed(text: str, workflow: str | None, tag: str) -> None:
    ref = validate_workflow(python(**{"depends-on": [text]})).depends_on[0]
    assert ref == DepRef(workflow, tag)
    assert str(ref) == text
    assert hash(ref) == hash(DepRef(workflow, tag))
    with pytest.raises(AttributeError):
        ref.tag = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("prepare", 'write "prepare:latest"'),
        (":latest", "names no workflow"),
        ("prepare:", "no tag"),
        ("a b:latest", "not a valid workflow name"),
        ("a:b:c", "not a valid tag"),
        (7, "WORKFLOW:latest"),
    ],
)
def test_bad_depends_on_entries_are_explained(text: object, fragment: str) -> None:
    assert fragment in check(python(**{"depends-on": [text]}))


def test_artifacts_are_normalised() -> None:
    wf = validate_workflow(
        python(artifacts=["data/", "./out/./x", {"path": "ckpt", "mount": True}, "a/../b"])
    )
    assert wf.artifacts == [
        ArtifactSpec(path="data"),
        ArtifactSpec(path="out/x"),
        ArtifactSpec(path="ckpt", mount=True),
        ArtifactSpec(path="b"),
    ]


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/etc", "not a relative path"),
        ("~/x", "not a relative path"),
        ("..", "leads outside"),
        ("a/../../x", "leads outside"),
        ("", "empty"),
        ("  ", "empty"),
        ("a\0b", "NUL"),
    ],
)
def test_escaping_artifact_paths_are_refused(path: str, fragment: str) -> None:
    message = check(python(artifacts=["ok", path]))
    assert "artifacts[1]" in message and fragment in message


@settings(max_examples=60)
@given(st.text(alphabet="./a~\\ ", max_size=12))
def test_an_accepted_artifact_path_never_leaves_the_working_dir(path: str) -> None:
    try:
        normal = validate_workflow(python(artifacts=[path])).artifacts[0].path
    except SpecError:
        return
    assert normal and not normal.startswith(("/", "../")) and normal != ".."
    assert ".." not in normal.split("/")


@settings(max_examples=60)
@given(
    st.sampled_from(["", "train", "a.b-c_1"]),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,8}", fullmatch=True),
)
def test_dep_refs_round_trip(workflow: str, tag: str) -> None:
    if not workflow and tag == "latest":
        return
    ref = DepRef.parse(f"{workflow}:{tag}")
    assert (ref.workflow, ref.tag) == (workflow or None, tag)
    assert DepRef.parse(str(ref)) == ref


def test_working_dir_must_stay_in_the_project() -> None:
    assert validate_workflow(python(working_dir="src/./app/")).working_dir == "src/app"
    assert "leads outside the project" in check(python(working_dir="../other"))


def test_resources() -> None:
    res = validate_workflow(
        python(
            resources={
                "cpu": 8,
                "memory": "16GB",
                "gpu": {"name": "A100", "memory": "80GiB"},
                "shm_size": "8G",
                "disk": "100GB",
                "interruptible": True,
            }
        )
    ).resources
    assert res.cpu == 8 and res.memory == 16 * GB and res.disk == 100 * GB
    assert res.shm_size == 8 * 1024**3 and res.interruptible
    assert res.gpu == GpuSpec(count=1, name="A100", memory_bytes=80 * 1024**3)
    assert validate_workflow(python(resources={"gpu": 0})).resources.gpu is None
    assert validate_workflow(python(resources={"gpu": "2"})).resources.gpu == GpuSpec(count=2)


@pytest.mark.parametrize(
    ("resources", "where", "fragment"),
    [
        ({"gpu": "lots"}, "resources.gpu", '"lots"'),
        ({"gpu": True}, "resources.gpu", "true"),
        ({"gpu": -1}, "resources.gpu", "negative"),
        ({"memory": "12XB"}, "resources.memory", "XB"),
        ({"gpu": {"count": 0}}, "resources.gpu.count", "at least 1"),
        ({"gpu": {"memory": "big"}}, "resources.gpu.memory", '"big"'),
        ({"cpu": 0}, "resources.cpu", "at least 1"),
        ({"cpu": True}, "resources.cpu", "true"),
        ({"disk": 0}, "resources.disk", "more than 0"),
        ({"shm_size": "1.5B"}, "shm_size", "whole"),
        ({"shm_size": "1.5"}, "shm_size", "needs a unit"),
        ({"memory": "16"}, "resources.memory", 'invalid size "16": a size needs a unit'),
        ({"cpus": 2}, "resources.cpus", 'Did you mean "cpu"?'),
    ],
)
def test_bad_resources_are_explained(resources: dict, where: str, fragment: str) -> None:
    message = check(python(resources=resources))
    assert where in message and fragment in message


@pytest.mark.parametrize(
    ("resources", "where"),
    [
        ("{memory: 16}", "resources.memory"),
        ("{memory: 16.0}", "resources.memory"),
        ("{memory: 1.5}", "resources.memory"),
        ('{memory: "16"}', "resources.memory"),
        ("{shm_size: 8}", "resources.shm_size"),
        ("{disk: 100}", "resources.disk"),
        ("{gpu: {count: 1, memory: 24}}", "resources.gpu.memory"),
    ],
)
def test_a_size_without_a_unit_in_a_file_names_file_and_line(
        tmp_path: Path, resources: str, where: str) -> None:
    # `memory: 16` was read as 16 bytes, which no machine lacks: the job ran anywhere.
    message = load_error(tmp_path, GOOD + f"    resources: {resources}\n")
    assert message.startswith(f"{FILE}:5:") and f"workflows[0].{where}: invalid size" in message
    assert "needs a unit" in message and "16GB" in message and "16GiB" in message


def test_sizes_given_in_bytes_by_dstack_itself_stay_bytes() -> None:
    # A run's stored job keeps sizes as numbers of bytes; reading them back is not user input.
    assert Resources.model_validate({"memory": 16 * GB, "disk": 1024}).memory == 16 * GB
    assert validate_workflow(python(resources={"shm_size": 1024})).resources.shm_size == 1024


def test_the_schema_asks_for_sizes_with_a_unit() -> None:
    memory = workflow_file_schema()["$defs"]["Resources"]["properties"]["memory"]
    text = json.dumps(memory)
    assert "integer" not in text and re.search(r"\[A-Za-z\]\+", text), text


def test_environment_and_env_make_the_effective_environment() -> None:
    wf = validate_workflow(
        python(
            environment={"EPOCHS": 10, "DEBUG": True, "RATE": 0.5, "A": "x"},
            env=[
                "A=override",
                "TOKEN=$TOKEN",
                "P=${HOME}/data",
                "D=${NOPE:-fallback}",
                "U=$UNSET",
                "COST=$$5",
                "EQ=a=b",
            ],
        )
    )
    assert wf.environment == {"EPOCHS": "10", "DEBUG": "true", "RATE": "0.5", "A": "x"}
    outer = {"TOKEN": "secret", "HOME": "/home/me"}
    assert wf.effective_env(outer) == {
        "EPOCHS": "10",
        "DEBUG": "true",
        "RATE": "0.5",
        "A": "override",
        "TOKEN": "secret",
        "P": "/home/me/data",
        "D": "fallback",
        "U": "",
        "COST": "$5",
        "EQ": "a=b",
    }


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"env": ["FOO"]}, '"FOO" is not KEY=VALUE'),
        ({"env": ["1X=a"]}, '"1X"'),
        ({"env": ["A=${oops"]}, "bad variable reference"),
        ({"environment": {"BAD-NAME": "x"}}, '"BAD-NAME"'),
        ({"environment": {"A": None}}, "environment.A"),
        ({"environment": ["A=1"]}, "a mapping"),
    ],
)
def test_bad_environment_is_explained(fields: dict, fragment: str) -> None:
    assert fragment in check(python(**fields))


@pytest.mark.parametrize(
    "name",
    ["a;b", "a b", "$(x)", "a|b", "a&b", "`x`", "a/b", "a*", "-a", ".a", "a'b", "", "x" * 101],
)
def test_names_with_shell_metacharacters_are_refused(name: str) -> None:
    assert "name" in check(python(name=name))


@pytest.mark.parametrize("name", ["train", "Train-2", "a.b_c", "9lives"])
def test_good_names(name: str) -> None:
    assert validate_workflow(python(name=name)).name == name


# -- providers --------------------------------------------------------------------------------


def test_the_registry_names_nine_lazily_imported_providers() -> None:
    assert sorted(PROVIDERS) == sorted(
        ["python", "bash", "docker", "streamlit", "gradio", "fastapi", "lab", "code", "notebook"]
    )
    for name in PROVIDERS:
        assert issubclass(provider_params(name), BaseModel)
    with pytest.raises(
        UsageError, match=re.escape('unknown provider "pyton". Did you mean "python"?')
    ):
        provider_params("pyton")
    code = (
        "import sys, dstack.spec.models, dstack.spec.loader, dstack.spec.registry;"
        "print([m for m in sys.modules if m.startswith('dstack.providers')])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_provider_fields() -> None:
    wf = validate_workflow(
        python(args=["--lr", 0.1, "--n", 3, True], requirements="req.txt", version="3.11")
    )
    assert wf.args == ["--lr", "0.1", "--n", "3", "true"] and wf.version == "3.11"
    bash = validate_workflow({"provider": "bash", "commands": ["ls", "pwd"], "ports": 2})
    assert bash.commands == ["ls", "pwd"] and bash.ports == 2
    docker = validate_workflow(
        {
            "provider": "docker",
            "image": "ubuntu:22.04",
            "entrypoint": "/bin/sh -c",
            "commands": ["echo hi"],
            "registry_auth": {"username": "u", "password": "p"},
        }
    )
    assert docker.entrypoint == ["/bin/sh", "-c"] and docker.ports == 0
    assert docker.registry_auth.username == "u"
    api = validate_workflow(
        {
            "provider": "fastapi",
            "app": "pkg.main:app",
            "uvicorn": {"workers": 2, "reload": False, "log-level": "info"},
        }
    )
    assert api.uvicorn == {"workers": 2, "reload": False, "log-level": "info"}
    gradio = validate_workflow({"provider": "gradio", "file": "ui.py", "args": "--share"})
    assert gradio.args == ["--share"]
    for name in ("lab", "code", "notebook"):
        assert validate_workflow({"provider": name, "version": "4.2.5"}).version == "4.2.5"
        assert validate_workflow({"provider": name}).version is None


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (python(version=3.10), 'quotes, e.g. "3.10"'),
        (python(version="2.7"), "not a Python 3"),
        (python(args="--name 'unclosed"), "No closing quotation"),
        (python(file=""), "not be empty"),
        ({"provider": "bash", "commands": []}, "commands: must not be empty"),
        ({"provider": "bash", "commands": "ls"}, 'expected a list, got "ls"'),
        ({"provider": "bash", "commands": ["ls"], "ports": -1}, "at least 0"),
        ({"provider": "docker"}, '"image" is required'),
        (
            {"provider": "docker", "image": "x", "registry_auth": {"username": "u"}},
            "registry_auth: give exactly one of `password` and `password_secret`",
        ),
        ({"provider": "fastapi", "app": "main"}, "module:attribute"),
        ({"provider": "fastapi", "app": "main:app", "uvicorn": {"port": 80}}, "set by dstack"),
        (
            {"provider": "fastapi", "app": "main:app", "uvicorn": {"workers": [2]}},
            "uvicorn.workers",
        ),
        ({"provider": "streamlit"}, '"target" is required'),
        ({"provider": "python", "file": "a.py", "target": "x"}, "(streamlit has it)"),
        ({"provider": "lab", "version": "latest!"}, "not a version"),
    ],
)
def test_bad_provider_fields_are_explained(data: dict, fragment: str) -> None:
    assert fragment in check(data)


def test_unknown_and_missing_providers_on_the_command_line() -> None:
    message = check({"provider": "pyhton", "file": "x.py"})
    assert message.startswith(
        '<command line>: provider: unknown provider "pyhton". Did you mean "python"?'
    )
    assert '"provider" is required' in check({"file": "x.py"})
    assert "expected a mapping" in check(["python"])  # type: ignore[arg-type]


def test_a_misspelt_required_field_gives_one_line() -> None:
    assert check({"provider": "python", "fiel": "x.py"}) == (
        '<command line>: fiel: unknown field "fiel". Did you mean "file"?'
    )


# -- files: where problems are ----------------------------------------------------------------

GOOD = "workflows:\n  - name: a\n    provider: python\n    file: a.py\n"


def test_problems_name_file_line_field_and_suggestion(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        (
            "workflows:\n"
            "  - name: train\n"
            "    provider: python\n"
            "    file: 12\n"
            "    artifact: [checkpoint]\n"
            "    resources:\n"
            "      gpu: lots\n"
            "      memory: 12XB\n"
        ),
    )
    lines = message.splitlines()
    assert lines[0] == f"{FILE}:4:11: workflows[0].file: expected a string, got the number 12"
    assert lines[1] == (
        f'{FILE}:5:5: workflows[0].artifact: unknown field "artifact". Did you mean "artifacts"?'
    )
    assert lines[2].startswith(f"{FILE}:7:12: workflows[0].resources.gpu: expected a GPU count")
    assert '"lots"' in lines[2]
    assert lines[3].startswith(f'{FILE}:8:15: workflows[0].resources.memory: invalid size "12XB"')
    assert len(lines) == 4


def test_unknown_provider_in_a_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, GOOD.replace("python", "pyhton"))
    assert message.startswith(
        f'{FILE}:3:15: workflows[0].provider: unknown provider "pyhton". Did you mean "python"?'
    )


def test_missing_fields_point_at_the_workflow(tmp_path: Path) -> None:
    message = load_error(tmp_path, GOOD + "  - provider: python\n")
    assert message.splitlines() == [
        f'{FILE}:5:5: workflows[1]: "name" is required',
        f'{FILE}:5:5: workflows[1]: "file" is required',
    ]
    assert '"provider" is required' in load_error(tmp_path, "workflows:\n  - name: a\n")
    assert "workflows[0].name: expected a workflow name" in load_error(
        tmp_path, GOOD.replace("name: a", "name:")
    )


@pytest.mark.parametrize("name", ["a;rm -rf", "$(id)", "a b"])
def test_bad_names_in_a_file(tmp_path: Path, name: str) -> None:
    message = load_error(tmp_path, GOOD.replace("name: a", f"name: '{name}'"))
    assert message.startswith(f"{FILE}:2:11: workflows[0].name: ")
    assert "not a valid workflow name" in message


def test_duplicate_names_name_both_lines(tmp_path: Path) -> None:
    message = load_error(tmp_path, GOOD + "  - name: a\n    provider: bash\n    commands: [ls]\n")
    assert message == (
        f'{FILE}:5:11: workflows[1].name: "a" is defined twice: at {FILE}:2 and {FILE}:5'
    )


def test_duplicate_names_across_files(tmp_path: Path) -> None:
    project(tmp_path, GOOD)
    project(tmp_path, GOOD, "workflows/more.yaml")
    with pytest.raises(SpecError, match=f"at {FILE}:2 and .dstack/workflows/more.yaml:2"):
        load_workflows(tmp_path)


def test_unknown_dependency(tmp_path: Path) -> None:
    message = load_error(
        tmp_path,
        GOOD
        + (
            "  - name: b\n    provider: bash\n    commands: [ls]\n    depends-on:\n"
            "      - a:latest\n      - aa:v1\n      - :v2\n"
        ),
    )
    assert message == (
        f'{FILE}:10:9: workflows[1].depends-on[1]: "aa:v1" refers to unknown '
        'workflow "aa". Did you mean "a"?'
    )


def test_dependency_cycles_are_named(tmp_path: Path) -> None:
    def wf(name: str, dep: str) -> str:
        return (
            f"  - name: {name}\n    provider: bash\n    commands: [ls]\n    depends-on: [{dep}]\n"
        )

    text = "workflows:\n" + wf("a", "b:latest") + wf("b", "c:v1") + wf("c", "a:latest")
    message = load_error(tmp_path, text + wf("d", "d:latest"))
    assert message.splitlines() == [
        f"{FILE}:5:18: workflows[0].depends-on[0]: dependency cycle: a -> b -> c -> a",
        f"{FILE}:17:18: workflows[3].depends-on[0]: dependency cycle: d -> d",
    ]


def test_unknown_top_level_keys_and_x_keys(tmp_path: Path) -> None:
    message = load_error(tmp_path, "workflow:\n  - name: a\n")
    assert message.splitlines()[0] == (
        f'{FILE}:1:1: workflow: unknown key "workflow". Did you mean "workflows"?'
    )
    assert f'{FILE}:1:1: "workflows" is missing' in message
    text = "x-base: &base\n  provider: bash\n  commands: [ls]\n"
    text += "workflows:\n  - <<: *base\n    name: a\n"
    assert load_workflows(project(tmp_path, text))["a"].commands == ["ls"]


def test_merge_keys_let_own_keys_win(tmp_path: Path) -> None:
    text = (
        "workflows:\n  - &b\n    name: a\n    provider: bash\n    commands: [ls]\n"
        "  - <<: *b\n    name: b\n    commands: [pwd]\n"
    )
    workflows = load_workflows(project(tmp_path, text))
    assert workflows["b"].commands == ["pwd"] and workflows["b"].provider == "bash"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "- a\n- b\n",
            f"{FILE}:1:1: the top level must be a mapping with a `workflows:` list, not a list",
        ),
        (
            "workflows:\n  name: a\n",
            f"{FILE}:2:3: workflows: expected a list of workflows, got a mapping",
        ),
        (
            "workflows:\n",
            f"{FILE}:1:11: workflows: expected a list of workflows, got nothing (null)",
        ),
        (
            "workflows:\n  - python\n",
            f'{FILE}:2:5: workflows[0]: expected a mapping of workflow fields, got "python"',
        ),
        (
            GOOD + "    file: b.py\n",
            f'{FILE}:5:5: workflows[0].file: duplicate key "file" (first at line 4)',
        ),
        (
            "workflows:\n  - name: a\n    1: x\n",
            f"{FILE}:3:5: workflows[0]: a key must be text, not the number 1; quote it",
        ),
        (
            "workflows: &a\n  - *a\n",
            f"{FILE}:1:12: workflows[0]: an alias refers to the mapping or list it is inside",
        ),
    ],
)
def test_structural_problems(tmp_path: Path, text: str, expected: str) -> None:
    assert load_error(tmp_path, text) == expected


def test_yaml_syntax_errors_give_the_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_workflows(project(tmp_path, "workflows:\n  - name: a\n    provider: [python\n"))
    assert caught.value.message.startswith(f"{FILE}:4:1: invalid YAML: ")
    message = load_error(tmp_path, "workflows: []\n---\nworkflows: []\n")
    assert message.startswith(f"{FILE}:2:1: invalid YAML")
    assert load_error(tmp_path, "workflows: !!python/object:os.system x\n").startswith(
        f"{FILE}:1:12: invalid YAML: could not determine a constructor"
    )


@pytest.mark.parametrize(
    "text", ["workflows:\n\t- name: a\n", "workflows:\n  - name: a\n  \tprovider: python\n"]
)
def test_tabs_are_explained(tmp_path: Path, text: str) -> None:
    with pytest.raises(SpecError) as caught:
        load_workflows(project(tmp_path, text))
    assert "a tab is used for indentation; YAML allows only spaces" in caught.value.message
    assert caught.value.message.startswith(f"{FILE}:")
    assert "\t" in (caught.value.hint or "")  # the offending line is shown


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", f"{FILE}: the file is empty"),
        (b"# only a comment\n\n", f"{FILE}: the file is empty"),
        (b"workflows:\n  - name: caf\xe9\n", f"{FILE}:2:14: not valid UTF-8 (byte 0xe9)"),
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            f"{FILE}: this is a binary file (it has NUL bytes), not YAML text",
        ),
        ("workflows: []\n".encode("utf-16"), f"{FILE}: the file is UTF-16"),
        (
            b"workflows: []\nx: \x01\n",
            f"{FILE}:2:4: invalid YAML: unacceptable character #x0001: "
            "control characters are not allowed",
        ),
    ],
)
def test_unreadable_files(tmp_path: Path, data: bytes, expected: str) -> None:
    assert load_error(tmp_path, data) == expected


def test_a_utf8_bom_is_fine(tmp_path: Path) -> None:
    assert list(load_workflows(project(tmp_path, b"\xef\xbb\xbf" + GOOD.encode()))) == ["a"]


def test_huge_files_are_refused(tmp_path: Path) -> None:
    assert MAX_FILE_BYTES == 5 * 1024 * 1024
    message = load_error(tmp_path, GOOD + "#" * MAX_FILE_BYTES)
    assert message == f"{FILE}: the file is over 5MiB, the limit for a workflow file"


def test_alias_bombs_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    bomb = "x-a: &a [" + ",".join(["x"] * 10) + "]\n"
    for prev, cur in zip("abcdef", "bcdefg", strict=True):
        bomb += f"x-{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]\n"
    assert "more than 200000 values" in load_error(tmp_path, bomb + "workflows: []\n")
    assert "nest" in load_error(tmp_path, "workflows: " + "[" * 3000 + "]" * 3000 + "\n")


def test_many_problems_are_capped(tmp_path: Path) -> None:
    text = "workflows:\n" + "".join(f"  - name: w{i}\n    provider: python\n" for i in range(30))
    lines = load_error(tmp_path, text).splitlines()
    assert len(lines) == MAX_PROBLEMS + 1 and lines[-1] == "... and 10 more problems"


def test_no_pydantic_error_escapes(tmp_path: Path) -> None:
    text = GOOD + "    resources: {gpu: {count: x, memory: [1]}, cpu: {}}\n    setup: [[1]]\n"
    with pytest.raises(SpecError) as caught:
        load_workflows(project(tmp_path, text))
    assert "pydantic" not in str(caught.value) and "Input should" not in str(caught.value)
    assert caught.value.hint and "dstack schema" in caught.value.hint


@pytest.mark.parametrize(
    ("value", "fragment"), [("2024-13-45", "month must be in 1..12"), ("!!float abc", '"abc"')]
)
def test_unreadable_scalars(tmp_path: Path, value: str, fragment: str) -> None:
    message = load_error(tmp_path, GOOD + f"    help: {value}\n")
    assert message.startswith(f"{FILE}:5:11: workflows[0].help: cannot read")
    assert fragment in message and "quote it" in message


def test_artifact_escapes_in_a_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, GOOD + "    artifacts:\n      - ok\n      - ../../etc\n")
    assert message == (
        f'{FILE}:7:9: workflows[0].artifacts[1].path: "../../etc" leads outside the working '
        "directory; give a path inside it"
    )


def test_limits_can_be_lowered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec_loader, "MAX_FILE_BYTES", 10)
    assert "over 10B" in load_error(tmp_path, GOOD)


# -- JSON Schema ------------------------------------------------------------------------------


def _conforms(data: Any, schema: dict, defs: dict) -> bool:
    """A small JSON Schema check: $ref, type, const, required, properties, oneOf/anyOf, items."""
    if "$ref" in schema:
        return _conforms(data, defs[schema["$ref"].split("/")[-1]], defs)
    if "oneOf" in schema:
        return sum(_conforms(data, s, defs) for s in schema["oneOf"]) == 1
    if "anyOf" in schema:
        return any(_conforms(data, s, defs) for s in schema["anyOf"])
    if "const" in schema and data != schema["const"]:
        return False
    kinds = {
        "object": dict,
        "array": list,
        "string": str,
        "integer": int,
        "boolean": bool,
        "number": (int, float),
        "null": type(None),
    }
    types = schema.get("type")
    if types and not any(
        isinstance(data, kinds[t]) for t in ([types] if isinstance(types, str) else types)
    ):
        return False
    if isinstance(data, dict):
        if not set(schema.get("required", [])) <= set(data):
            return False
        props = schema.get("properties", {})
        for key, value in data.items():
            if key in props:
                if not _conforms(value, props[key], defs):
                    return False
            elif schema.get("additionalProperties") is False and not key.startswith("x-"):
                return False
    if isinstance(data, list) and "items" in schema:
        return all(_conforms(item, schema["items"], defs) for item in data)
    return True


def test_schema_is_a_file_of_workflows_one_of_each_provider() -> None:
    schema = workflow_file_schema()
    json.dumps(schema)
    assert schema["type"] == "object" and schema["required"] == ["workflows"]
    assert schema["additionalProperties"] is False
    items = schema["properties"]["workflows"]["items"]
    refs = [s["$ref"].split("/")[-1] for s in items["oneOf"]]
    assert len(refs) == len(PROVIDERS) == 9
    consts = {schema["$defs"][r]["properties"]["provider"]["const"] for r in refs}
    assert consts == set(PROVIDERS)
    for ref in refs:
        definition = schema["$defs"][ref]
        assert definition["additionalProperties"] is False
        assert {"name", "provider"} <= set(definition["required"])
        assert "depends-on" in definition["properties"]
        assert all(p.get("description") for p in definition["properties"].values())
    assert "file" in schema["$defs"]["PythonWorkflow"]["required"]


def test_schema_accepts_the_example_and_rejects_unknown_keys() -> None:
    import yaml

    schema = workflow_file_schema()
    data = yaml.safe_load((EXAMPLE / FILE).read_text())
    assert _conforms(data, schema, schema["$defs"])
    data["workflows"][0]["artifact"] = ["x"]
    assert not _conforms(data, schema, schema["$defs"])
    del data["workflows"][0]["artifact"]
    data["workflows"][2]["provider"] = "pyhton"
    assert not _conforms(data, schema, schema["$defs"])


def test_every_model_field_has_a_description() -> None:
    seen: set[type[BaseModel]] = set()

    def walk(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.add(model)
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name}"
            assert model.model_config.get("extra") == "forbid"
            sub = spec_validation._model_in(info.annotation)
            if sub is not None:
                walk(sub)

    for name in PROVIDERS:
        walk(workflow_model(name))
    assert {"Resources", "GpuSpec", "ArtifactSpec", "RegistryAuth"} <= {m.__name__ for m in seen}

"""The provider contract (`dstack.spec.provider`): every registered provider is a `Provider`
that declares its usage, reads its command-line form and returns `JobParts`; lab and notebook
are rows of one table over one renderer."""

from __future__ import annotations

import pytest

from dstack.cli.provider_help import cli_form
from dstack.errors import UsageError
from dstack.providers import apps, docker
from dstack.run.submit import make_job
from dstack.spec import registry
from dstack.spec.models import Workflow
from dstack.spec.provider import JobParts, Provider, Usage, provider_of
from dstack.spec.registry import PROVIDERS, provider_params
from dstack.spec.validation import validate_workflow

# The least each provider's command line needs.
MINIMAL = {"python": ["x.py"], "bash": ["echo hi"], "docker": ["ubuntu"],
           "streamlit": ["app.py"], "gradio": ["app.py"], "fastapi": ["main:app"],
           "lab": [], "code": [], "notebook": []}


def test_every_provider_has_a_minimal_form_here() -> None:
    assert sorted(MINIMAL) == sorted(PROVIDERS)


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_every_registered_provider_is_a_provider_declaring_its_usage(name: str) -> None:
    provider = provider_params(name)
    assert issubclass(provider, Provider)
    assert isinstance(provider.usage, Usage)
    assert provider.usage.summary and provider.usage.args
    assert cli_form(name, provider) == f"dstack run {name} {provider.usage.args}"


@pytest.mark.parametrize("name", list(PROVIDERS))
def test_job_parts_of_a_minimal_workflow(name: str) -> None:
    fields, _rest = provider_params(name).from_cli(MINIMAL[name])
    wf = validate_workflow({"provider": name, **fields})
    provider = provider_of(wf)
    assert isinstance(provider, provider_params(name))
    parts = provider.job_parts(wf)
    assert isinstance(parts, JobParts)
    assert parts.shell or parts.argv


def test_a_bare_workflow_has_no_provider_side() -> None:
    with pytest.raises(TypeError, match="not a provider's workflow model"):
        provider_of(Workflow(provider="bash"))


def test_a_provider_without_job_parts_cannot_be_made() -> None:
    class Incomplete(Provider):
        usage = Usage("does nothing")

    with pytest.raises(TypeError, match="job_parts"):
        Incomplete()


def test_the_registry_refuses_a_target_that_is_not_a_provider(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.PROVIDERS, "bare", "dstack.spec.models:Workflow")
    with pytest.raises(TypeError, match=r"Workflow is not a subclass of Provider"):
        provider_params("bare")


def test_the_default_command_line_form_passes_everything_through() -> None:
    for name in ("lab", "notebook", "code"):
        assert provider_params(name).from_cli(["a", "--b"]) == ({}, ["a", "--b"])


def test_a_form_that_needs_an_argument_shows_its_usage_line() -> None:
    with pytest.raises(UsageError, match="needs its target") as caught:
        provider_params("streamlit").from_cli(["--port"])
    assert caught.value.hint == "Write it as `dstack run streamlit app.py [ARGS]...`."


def test_docker_reads_the_common_fields_it_is_given() -> None:
    common = validate_workflow({"provider": "bash", "commands": ["x"], "env": ["A=1"],
                                "environment": {"B": "2"},
                                "resources": {"gpu": 2, "shm_size": "1GB"}})
    [line] = docker.Params(image="img").job_parts(common).shell
    assert "--gpus 2" in line and "--shm-size 1000000000b" in line
    assert "-e B -e A -e DSTACK_RUN" in line
    [bare] = docker.Params(image="img").job_parts(Workflow(provider="docker")).shell
    assert "--gpus" not in bare and "-e B" not in bare


def test_lab_and_notebook_are_rows_of_one_table() -> None:
    assert sorted(apps.JUPYTER) == ["lab", "notebook"]
    for name, row in apps.JUPYTER.items():
        provider = provider_params(name)
        assert issubclass(provider, apps.JupyterParams) and provider.jupyter is row
        assert "job_parts" not in vars(provider)  # the one renderer
        version = provider.model_fields["version"]
        assert version.description == row.version_help and version.default is None
    lab = make_job(validate_workflow({"provider": "lab", "version": "4.2.5"}), [], {})
    notebook = make_job(validate_workflow({"provider": "notebook"}), [], {})
    assert lab.packages == ["jupyterlab==4.2.5"] and notebook.packages == ["notebook"]
    assert [a.url_path for a in lab.apps] == ["/lab?token={token}"]
    assert [a.url_path for a in notebook.apps] == ["/tree?token={token}"]
    assert lab.shell[0].replace("jupyterlab", "notebook") == notebook.shell[0]
    assert lab.token and notebook.token


def test_named_files_default_to_none() -> None:
    assert provider_of(validate_workflow({"provider": "bash", "commands": ["x"]})
                       ).named_files() == []
    [named] = provider_of(validate_workflow({"provider": "gradio", "file": "app.py"})
                          ).named_files()
    assert (named.field, named.value) == ("file", "app.py")

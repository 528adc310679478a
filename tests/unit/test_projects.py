"""Runs belong to a project: its identity (git remote without credentials, else its folder),
and `wf:latest` / `wf:TAG` resolved within it while `:TAG` works from any project."""

from __future__ import annotations

import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from dstack.errors import NotFoundError
from dstack.run.job import ArtifactPath, Job
from dstack.run.listing import project_runs, run_docs
from dstack.run.project import find_project_dir, project_of, strip_credentials
from dstack.run.record import RunRecord, Status, load_run, run_key
from dstack.run.tags import add_tag, latest_run, resolve_ref
from dstack.store.local import LocalStore

A = "https://github.com/acme/vision.git"
B = "/home/someone/nlp"


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the machine's git configuration (url rewrites, say) out of the tests."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def repo(path: Path, **remotes: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q")
    for name, url in remotes.items():
        git(path, "remote", "add", name, url)
    return path


# -- identity ----------------------------------------------------------------------------------


def test_a_remote_is_the_identity_without_its_credentials(tmp_path: Path) -> None:
    project = repo(tmp_path / "p", origin="https://alice:ghp_s3cret@github.com/acme/vision.git")
    assert project_of(project) == A
    assert project_of(project / ".") == A


def test_a_token_alone_in_an_https_url_is_a_credential_too(tmp_path: Path) -> None:
    project = repo(tmp_path / "p", origin="https://ghp_s3cret@gitlab.example.com:8443/a/b")
    assert project_of(project) == "https://gitlab.example.com:8443/a/b"


@pytest.mark.parametrize(("url", "want"), [
    ("https://u:p@host/x.git", "https://host/x.git"),
    ("http://tok@host/x", "http://host/x"),
    ("HTTPS://u:p@Host/X", "HTTPS://Host/X"),
    ("ssh://git:pw@host/x.git", "ssh://git@host/x.git"),
    ("ssh://git@host/x.git", "ssh://git@host/x.git"),
    ("git@github.com:acme/vision.git", "git@github.com:acme/vision.git"),
    ("/srv/git/vision.git", "/srv/git/vision.git"),
    ("https://host/a@b/c", "https://host/a@b/c"),
])
def test_strip_credentials(url: str, want: str) -> None:
    assert strip_credentials(url) == want


def test_origin_wins_else_the_first_remote(tmp_path: Path) -> None:
    both = repo(tmp_path / "both", upstream="git@host:up/x.git", origin="git@host:me/x.git")
    assert project_of(both) == "git@host:me/x.git"
    other = repo(tmp_path / "other", upstream="https://u:t@host/up/x.git")
    assert project_of(other) == "https://host/up/x.git"


def test_a_subfolder_of_a_repository_is_the_same_project(tmp_path: Path) -> None:
    project = repo(tmp_path / "p", origin=A)
    (project / "sub").mkdir()
    assert project_of(project / "sub") == A


def test_a_repository_without_a_remote_is_its_folder(tmp_path: Path) -> None:
    project = repo(tmp_path / "p")
    assert project_of(project) == str(project.resolve())


def test_a_plain_folder_is_its_absolute_resolved_path(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert project_of(tmp_path / "link") == str((tmp_path / "real").resolve())
    monkeypatch.chdir(tmp_path / "real")
    assert project_of(Path(".")) == str((tmp_path / "real").resolve())


def test_without_git_installed_a_folder_is_its_path(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    project = repo(tmp_path / "p", origin=A)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    assert project_of(project) == str(project.resolve())


# -- finding the project from a subfolder ------------------------------------------------------


def workflows_at(folder: Path, name: str = "workflows.yaml") -> Path:
    (folder / ".dstack").mkdir(parents=True, exist_ok=True)
    (folder / ".dstack" / name).write_text("workflows: []\n")
    return folder


@pytest.fixture
def homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """HOME and DSTACK_HOME away from the folders of a test."""
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path / "dstack-home"))
    return tmp_path / "user"


@pytest.mark.usefixtures("homes")
def test_the_nearest_folder_with_workflow_files_up_is_the_project(tmp_path: Path) -> None:
    outer = workflows_at(tmp_path / "outer")
    inner = workflows_at(outer / "a" / "inner", "workflows.yml")
    (inner / "b" / "c").mkdir(parents=True)
    assert find_project_dir(inner / "b" / "c") == inner.resolve()
    assert find_project_dir(inner) == inner.resolve()
    assert find_project_dir(outer / "a") == outer.resolve()
    (outer / "a" / ".dstack").mkdir()  # a .dstack without workflow files is no project
    assert find_project_dir(outer / "a") == outer.resolve()
    (outer / "a" / ".dstack" / "workflows").mkdir()  # a workflows/ folder makes it one
    assert find_project_dir(outer / "a") == (outer / "a").resolve()
    assert find_project_dir(tmp_path) is None


@pytest.mark.usefixtures("homes")
def test_the_walk_up_ends_at_the_root_of_a_git_repository(tmp_path: Path) -> None:
    outer = workflows_at(tmp_path / "outer")
    nested = repo(outer / "vendor" / "lib")
    (nested / "src").mkdir()
    assert find_project_dir(nested / "src") is None  # the repository is not outer's
    workflows_at(nested)
    assert find_project_dir(nested / "src") == nested.resolve()


def test_a_dstack_home_is_never_a_project(tmp_path: Path, homes: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    workflows_at(homes)  # ~/.dstack/workflows.yaml, in the default dstack home
    (homes / "code" / "x").mkdir(parents=True)
    assert find_project_dir(homes / "code" / "x") is None
    monkeypatch.setenv("DSTACK_HOME", str(tmp_path / "elsewhere" / ".dstack"))
    workflows_at(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "x").mkdir()
    assert find_project_dir(tmp_path / "elsewhere" / "x") is None
    assert find_project_dir(homes / "code" / "x") is None  # ~/.dstack is a home all the same


# -- records -----------------------------------------------------------------------------------

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)


def _run(store: LocalStore, name: str, workflow: str, project: str | None, minute: int,
         status: Status = Status.DONE) -> None:
    record = RunRecord(name=name, workflow=workflow, provider="python", profile="local",
                       backend="local", job=Job(provider="python",
                                                artifacts=[ArtifactPath(path="data")]),
                       stack=f"run-{name}", status=status, torn_down=True,
                       submitted_at=(T0 + timedelta(minutes=minute)).isoformat())
    doc = record.model_dump(mode="json")
    if project is None:  # a record written before runs had a project
        doc.pop("project")
    else:
        doc["project"] = project
    store.put_json(run_key(name), doc)


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    """prepare in A (older) and in B (newer), an old prepare without a project (newest)."""
    s = LocalStore(tmp_path / "store")
    _run(s, "a-prep-1", "prepare", A, 1)
    _run(s, "a-prep-2", "prepare", A, 2)
    _run(s, "a-prep-3", "prepare", A, 3, Status.FAILED)
    _run(s, "b-prep-1", "prepare", B, 4)
    _run(s, "old-prep-1", "prepare", None, 5)
    return s


def test_a_record_without_a_project_loads_as_of_an_unknown_project(store: LocalStore) -> None:
    assert load_run(store, "old-prep-1").project is None
    assert load_run(store, "a-prep-1").project == A


@pytest.mark.parametrize("cached", [False, True])
def test_latest_is_the_newest_successful_run_in_the_project(
        store: LocalStore, tmp_path: Path, cached: bool) -> None:
    cache = tmp_path / "cache.json" if cached else None
    for _ in range(2):  # the second time, settled runs come from the cache
        assert resolve_ref(store, "prepare", "latest", cache, project=A).name == "a-prep-2"
        assert resolve_ref(store, "prepare", "latest", cache, project=B).name == "b-prep-1"
        run = latest_run(store, "prepare", A, cache)
        assert run is not None and run.name == "a-prep-2"


def test_the_listing_cache_keeps_the_project(store: LocalStore, tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    run_docs(store, cache)
    assert '"a-prep-1"' in cache.read_text() and A in cache.read_text()
    docs = {d["name"]: d for d in run_docs(store, cache)}
    assert (docs["a-prep-1"]["project"], docs["b-prep-1"]["project"]) == (A, B)
    assert docs["old-prep-1"].get("project") is None


def test_a_project_lists_only_its_runs_and_old_runs_are_of_the_unknown_one(
        store: LocalStore) -> None:
    docs = run_docs(store)
    assert [d["name"] for d in project_runs(docs, A)] == ["a-prep-3", "a-prep-2", "a-prep-1"]
    assert [d["name"] for d in project_runs(docs, B)] == ["b-prep-1"]
    assert [d["name"] for d in project_runs(docs, None)] == ["old-prep-1"]


def test_latest_with_runs_only_in_other_projects_says_so(store: LocalStore) -> None:
    with pytest.raises(NotFoundError) as err:
        resolve_ref(store, "prepare", "latest", project="/somewhere/else")
    assert "prepare:latest" in err.value.message
    hint = err.value.hint or ""
    assert "Runs of prepare exist in 3 other projects" in hint
    assert ":TAG" in hint and "dstack run prepare" in hint

    with pytest.raises(NotFoundError) as err:
        resolve_ref(store, "train", "latest", project=A)
    assert "other project" not in (err.value.hint or "")
    assert "dstack run train" in (err.value.hint or "")


def test_a_tag_is_global_but_wf_tag_stays_in_the_project(store: LocalStore) -> None:
    add_tag(store, "shared", load_run(store, "b-prep-1"))
    assert resolve_ref(store, None, "shared", project=A).name == "b-prep-1"
    assert resolve_ref(store, "prepare", "shared", project=B).name == "b-prep-1"
    with pytest.raises(NotFoundError) as err:
        resolve_ref(store, "prepare", "shared", project=A)
    assert "another project" in err.value.message
    assert "`:shared`" in (err.value.hint or "")

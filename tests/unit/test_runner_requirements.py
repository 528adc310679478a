"""The runner's requirements (what a remote machine installs besides the wheel, which it
installs `--no-deps`) keep pyproject.toml's bounds, cover every store, and are all the runner
imports: it runs a job with every other distribution refused."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib

from dstack.errors import UsageError
from dstack.run.job import ArtifactPath, Job
from dstack.run.record import RunRecord, Status, load_run
from dstack.runner.requirements import (
    RUNNER_REQUIREMENTS,
    STORE_REQUIREMENTS,
    runner_requirements,
)
from dstack.stacks.wheel import source_root
from dstack.store.base import STORES
from dstack.store.job_log import read_log_text
from dstack.store.keys import run_key
from dstack.store.local import LocalStore

HEAVY = ("pulumi", "pulumi_aws", "pulumi_gcp", "pulumi_kubernetes", "kubernetes", "typer",
         "rich", "yaml", "boto3", "botocore", "google", "semver")
"""What the runner must not import on a folder store (the CLI's and the Pulumi side's)."""


def canonical(name: str) -> str:
    """A distribution's name as pip compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def name_of(requirement: str) -> str:
    """The distribution a requirement names."""
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert found is not None, requirement
    return canonical(found.group(0))


def pyproject_dependencies() -> dict[str, str]:
    """pyproject.toml's dependencies by distribution name (spaces removed)."""
    root = source_root()
    assert root is not None
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    return {name_of(d): d.replace(" ", "") for d in deps}


def test_the_bounds_are_pyprojects() -> None:
    declared = pyproject_dependencies()
    every = [*RUNNER_REQUIREMENTS, *(r for reqs in STORE_REQUIREMENTS.values() for r in reqs)]
    assert every, "the runner needs pydantic at least"
    for requirement in every:
        assert name_of(requirement) in declared, f"{requirement} is not in pyproject.toml"
        assert requirement.replace(" ", "") == declared[name_of(requirement)], \
            f"{requirement} drifted from pyproject.toml's {declared[name_of(requirement)]}"


def test_every_store_has_its_requirements() -> None:
    assert set(STORE_REQUIREMENTS) == set(STORES)
    assert runner_requirements("file:///tmp/store") == RUNNER_REQUIREMENTS
    assert runner_requirements("s3://bucket?region=us-east-1") == (*RUNNER_REQUIREMENTS,
                                                                    "boto3>=1.34")
    assert runner_requirements("gs://bucket") == (*RUNNER_REQUIREMENTS,
                                                 "google-cloud-storage>=3.0")
    with pytest.raises(UsageError, match="ftp"):
        runner_requirements("ftp://host/path")


def runtime_closure(requirements: tuple[str, ...]) -> set[str]:
    """The installed distributions `requirements` bring, with their dependencies (extras
    left out; markers taken as true)."""
    seen: set[str] = set()
    todo = [name_of(r) for r in requirements]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for req in metadata.requires(name) or []:
            if "extra ==" not in req:
                todo.append(name_of(req))
    return seen


def bash_run(store_root: Path) -> LocalStore:
    """A folder store holding one submitted bash run (`lean-otter-1`) that prints a line and
    saves an artifact."""
    store = LocalStore(store_root)
    job = Job(provider="bash", shell=["echo hello from the job", "mkdir -p out",
                                      "echo saved > out/result.txt"],
              artifacts=[ArtifactPath(path="out")])
    record = RunRecord(name="lean-otter-1", provider="bash", profile="local", backend="local",
                       job=job, stack="run-lean-otter-1", status=Status.PROVISIONING)
    store.put_json(run_key(record.name), record.model_dump(mode="json"))
    return store


def assert_ran(store: LocalStore) -> None:
    """The run of `bash_run` ended done, with its output and its artifact in the store."""
    assert load_run(store, "lean-otter-1").status is Status.DONE
    assert "hello from the job" in read_log_text(store, "lean-otter-1").decode()
    assert store.get_bytes("runs/lean-otter-1/artifacts/out/result.txt") == b"saved\n"


BLOCKED_RUNNER = """\
import importlib.abc, json, runpy, sys
refused = set(json.loads(sys.argv[1]))
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in refused:
            raise ImportError(f"refused in this test: {name}")
        return None
sys.meta_path.insert(0, Refuse())
sys.argv = ["dstack.runner", *sys.argv[2:]]
runpy.run_module("dstack.runner", run_name="__main__", alter_sys=True)
"""


def test_the_runner_runs_a_job_with_everything_but_its_requirements_refused(
        tmp_path: Path) -> None:
    allowed = runtime_closure(RUNNER_REQUIREMENTS) | {"dstack"}
    refused = {module for module, dists in metadata.packages_distributions().items()
               if not {canonical(d) for d in dists} & allowed}
    assert set(HEAVY) <= refused
    store = bash_run(tmp_path / "store")
    done = subprocess.run(
        [sys.executable, "-c", BLOCKED_RUNNER, json.dumps(sorted(refused)), "--store",
         store.url, "--run", "lean-otter-1", "--workdir", str(tmp_path / "work"),
         "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_ran(store)

"""The runner in a fresh venv holding only what a remote machine installs: the dstack wheel
`--no-deps` and the runner's requirements for its store, fetched by this machine's pip as
any user's pip would. It runs a bash job against a folder store to its end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dstack.runner.requirements import runner_requirements
from dstack.stacks.wheel import build_wheel
from tests.unit.test_runner_requirements import HEAVY, assert_ran, bash_run


@pytest.mark.timeout(900)
def test_the_runner_runs_a_job_in_a_venv_with_the_wheel_and_its_requirements_only(
        tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "wheels")
    store = bash_run(tmp_path / "store")
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in ([*runner_requirements(store.url)], ["--no-deps", str(wheel.path)]):
        done = subprocess.run([*pip, *args], capture_output=True, text=True, env=env,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]

    # Nothing of the CLI or the Pulumi side is there; dstack is the wheel's, not this checkout.
    probe = ("import importlib.util, json, sys, dstack; print(json.dumps([dstack.__file__, "
             "[m for m in sys.argv[1:] if importlib.util.find_spec(m)]]))")
    found = subprocess.run([python, "-c", probe, *HEAVY], capture_output=True, text=True,
                           env=env, cwd=tmp_path, check=True)
    where, present = json.loads(found.stdout)
    assert where.startswith(str(venv)) and present == []

    done = subprocess.run(
        [python, "-m", "dstack.runner", "--store", store.url, "--run", "lean-otter-1",
         "--workdir", str(tmp_path / "work"), "--cache", str(tmp_path / "cache")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_ran(store)

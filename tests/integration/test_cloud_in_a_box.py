"""A cloud run in a box: the AWS run program (under Pulumi's mocks, as its plugin cannot run
here) yields its user-data; that exact script runs on this machine, with a private /opt
standing in for the instance's disk, against the S3 server on loopback. The CLI then shows
the run's logs, status, artifacts and tag from S3 as for any run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest

from dstack.config.cloud_profiles import aws_profile
from dstack.config.profiles import add_profile
from dstack.run.context import Context
from dstack.run.submit import RunOptions, plan_run, record_run
from dstack.stacks.aws import AwsBackend
from dstack.stacks.aws_programs import run_program
from tests.integration.servers import BUCKET, Server, env_patch, moto_server  # noqa: F401

PLANTED = "planted-secret-value-9d1f"
WORKFLOWS = """\
workflows:
  - name: train
    provider: python
    file: train.py
    artifacts: ["checkpoint"]
    resources: {cpu: 2}
"""
TRAIN = """\
import json, os, sys
os.makedirs("checkpoint", exist_ok=True)
with open("checkpoint/model.json", "w") as f:
    json.dump({"args": sys.argv[1:], "run": os.environ["DSTACK_RUN"]}, f)
print("trained on the instance", sys.argv[1:], "token", os.environ.get("API_TOKEN"))
"""


class _Mocks(pulumi.runtime.Mocks):
    """Answers the AMI lookup; records the resources the program declares."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0box", "rootDeviceName": "/dev/sda1", "blockDeviceMappings": [
                {"deviceName": "/dev/sda1", "ebs": {"volume_size": "30"}}]}
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": "vpc-box"}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            return {"ids": ["subnet-box"]}
        return {}


def user_data_of(program: Callable[[], None]) -> str:
    """The user-data of the EC2 instance the program declares."""
    mocks = _Mocks()
    pulumi.runtime.set_mocks(mocks, project="dstack", stack="box", preview=False)
    pulumi.runtime.test(program)()
    [instance] = [r.inputs for r in mocks.resources if r.typ == "aws:ec2/instance:Instance"]
    return str(instance["userData"])


def cli(home: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DSTACK_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "dstack.cli", *args], capture_output=True,
                          text=True, env=env, timeout=300, input=stdin)


@pytest.mark.timeout(900)
def test_the_aws_user_data_runs_a_job_end_to_end_against_s3(
        home: Path, tmp_path: Path, moto_server: Server,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to give the script a private /opt")
    monkeypatch.setenv("DSTACK_S3_ENDPOINT_URL", moto_server.url)  # the CLI's and runner's S3
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)  # the instance's wheel download
    monkeypatch.setenv("DSTACK_CALLER_CIDR", "203.0.113.9/32")
    profile, _ = aws_profile("box", aws_profile=None, region="us-east-1", bucket=BUCKET,
                             state_url=None, check=False)
    add_profile(home, profile, make_default=True)
    project = tmp_path / "project"
    (project / ".dstack").mkdir(parents=True)
    (project / ".dstack" / "workflows.yaml").write_text(WORKFLOWS)
    (project / "train.py").write_text(TRAIN)
    empty = cli(home, "secrets", "add", "API_TOKEN", "--from-stdin")
    assert empty.returncode == 2 and "empty" in empty.stderr, empty.stderr
    done = cli(home, "secrets", "add", "API_TOKEN", "--from-stdin", stdin=PLANTED)
    assert done.returncode == 0, done.stderr

    # What `dstack run train --epochs 2 --tag box-v1` does before the engine: plan, record.
    ctx = Context.open()
    plan = plan_run(ctx, project, "train", ["--epochs", "2"], RunOptions(tag="box-v1"))
    run = record_run(ctx, plan)
    backend = ctx.backend
    assert isinstance(backend, AwsBackend)
    bootstrap = backend.bootstrap(run)
    backend.publish_wheel()
    config = backend.run_config(run, bootstrap, {"instance_profile": "box-runner"})
    user_data = user_data_of(lambda: run_program(config))
    assert user_data == bootstrap
    assert PLANTED not in user_data

    # The instance: the exact script, /opt private to it, `shutdown` recorded, not obeyed.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "shutdown-calls"
    (fake_bin / "shutdown").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    (fake_bin / "shutdown").chmod(0o755)
    script = tmp_path / "user-data.sh"
    script.write_text(user_data)
    opt = tmp_path / "opt"
    opt.mkdir()
    boot = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         'mount --bind "$1" /opt && exec bash "$2"', "sh", str(opt), str(script)],
        capture_output=True, text=True, timeout=800,
        env={**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"})
    assert boot.returncode == 0, boot.stdout[-3000:] + boot.stderr[-3000:]
    assert (opt / "dstack" / "venv" / "bin" / "python").exists()  # installed under "/opt"
    # The wheel went in `--no-deps`: the runner's requirements only, no Pulumi, no CLI.
    site = next((opt / "dstack" / "venv" / "lib").glob("python3*/site-packages"))
    assert (site / "pydantic").is_dir() and (site / "boto3").is_dir()
    assert not [name for name in ("pulumi", "pulumi_aws", "typer", "rich", "yaml")
                if (site / name).exists()]
    shutdowns = calls.read_text().splitlines() if calls.exists() else []
    assert any(line.startswith("-h +") for line in shutdowns), shutdowns  # the watchdog

    # The CLI sees the run exactly as for any other.
    [row] = json.loads(cli(home, "ps", "--json", "-a", "-C", str(project)).stdout)
    assert (row["run"], row["status"], row["backend"]) == (run.name, "done", "aws")
    logs = cli(home, "logs", run.name).stdout
    assert "trained on the instance ['--epochs', '2'] token ***" in logs
    assert PLANTED not in logs
    listed = json.loads(cli(home, "artifacts", "list", run.name, "--json").stdout)
    assert [f["path"] for f in listed["files"]] == ["checkpoint/model.json"]
    out = tmp_path / "downloaded"
    assert cli(home, "artifacts", "download", ":box-v1", "-o", str(out)).returncode == 0
    model = json.loads((out / "checkpoint" / "model.json").read_text())
    assert model == {"args": ["--epochs", "2"], "run": run.name}
    tags = json.loads(cli(home, "tags", "list", "--json").stdout)
    assert [(t["name"], t["run"]) for t in tags] == [("box-v1", run.name)]
    assert calls.read_text().count("-h now") >= 1 or _eventually_powered_off(calls)


def _eventually_powered_off(calls: Path) -> bool:
    """The power-off watcher runs in the background once the runner exits."""
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if calls.exists() and "-h now" in calls.read_text():
            return True
        time.sleep(0.2)
    return False

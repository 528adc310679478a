"""`dstack --profile aws` end to end, through the CLI, on a stand-in AWS.

Each test is a new user with a named AWS profile in their own AWS files: `dstack config
add aws`, then runs. The real `pulumi_aws` programs go through the real engine and the
stand-in `pulumi-resource-aws` (tests/standins/aws.py) to moto; each instance runs its exact
user-data as a local process tree that installs the dstack wheel from the bucket with the
instance role's credentials (from its metadata server) and runs the job against the bucket.
See tests/integration/standin_clouds.py for the images and what the user's side looks like.
"""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import write_project
from tests.integration.standin_clouds import (
    CALLER,
    AwsCloud,
    CloudDstack,
    aws_cloud,  # noqa: F401
    baked_image,  # noqa: F401
    dstack_wheel,  # noqa: F401
    run_output,
    tls_cert,  # noqa: F401
    wait_exit,
    wait_for,
)
from tests.standins import instance

pytestmark = pytest.mark.cloud  # the slowest tests: `-m "not cloud"` skips them

ACCOUNT = "123456789012"  # moto's
BUCKET = f"dstack-{ACCOUNT}-us-east-1-ci"
WORKFLOWS = """
workflows:
  - name: train
    provider: python
    file: train.py
    artifacts: ["checkpoint"]
    resources: {cpu: 2}
  - name: evaluate
    provider: python
    file: evaluate.py
    depends-on: ["train:latest"]
  - name: fail
    provider: bash
    commands: ["echo about to fail", "exit 3"]
  - name: quick
    provider: bash
    commands: ["echo quick job done"]
  - name: sleeper
    provider: bash
    commands: ["mkdir -p out", "echo kept > out/early.txt", "echo sleeping", "sleep 900"]
    artifacts: ["out"]
  - name: api
    provider: fastapi
    app: main:app
"""
FILES = {
    "train.py": """
        import json, os, sys, time
        os.makedirs("checkpoint", exist_ok=True)
        with open("checkpoint/model.json", "w") as f:
            json.dump({"weights": [1, 2, 3], "args": sys.argv[1:]}, f)
        print("trained", sys.argv[1:], flush=True)
        release = os.environ.get("RELEASE")
        deadline = time.time() + 600
        while release and not os.path.exists(release) and time.time() < deadline:
            time.sleep(0.2)
        print("released", flush=True)
    """,
    "evaluate.py": """
        import json
        print("evaluated", json.load(open("checkpoint/model.json"))["weights"])
    """,
    "main.py": """
        from fastapi import FastAPI
        app = FastAPI()

        @app.get("/")
        def root() -> dict:
            return {"hello": "from the instance"}
    """,
}
SUBMITTED = re.compile(r"run ([a-z0-9-]+) submitted")


def user(home: Path, tmp_path: Path, cloud: AwsCloud, **extra: str) -> CloudDstack:
    """A user with the project and the profile `ci` (the default) on the stand-in AWS."""
    project = write_project(tmp_path / "project", WORKFLOWS, FILES)
    dstack = CloudDstack(home, project, cloud, extra)
    added = dstack("config", "add", "aws", "ci", "--aws-profile", "ci", "--region",
                   "us-east-1", "--default")
    assert ACCOUNT in added.stderr, added.stderr
    cloud.bucket = BUCKET
    return dstack


def baked(dstack: CloudDstack, image: Path, wheel: Path) -> None:
    """Later runs boot the baked image and install the session's wheel (see
    standin_clouds)."""
    ami = dstack.cloud.register_image(image)  # type: ignore[attr-defined]
    dstack("config", "set", "ci", "ami", ami)
    dstack.extra["DSTACK_WHEEL"] = str(wheel)


def submitted(text: str) -> str:
    """The run name a `dstack run` printed."""
    found = SUBMITTED.search(text)
    assert found, text
    return found.group(1)


def nothing_left(cloud: AwsCloud) -> None:
    """No instance runs, in moto or as a process tree, and no run's security group is left."""
    assert cloud.ec2_instances("pending", "running", "stopping", "stopped") == []
    assert cloud.dstack_groups() == []
    assert cloud.running() == []


def resources_of(trail: list[dict[str, Any]], kind: str) -> list[tuple[str, str]]:
    """(op, type) of the resources the updates of `kind` changed, from `audit --json`."""
    return [(c["op"], c["type"]) for t in trail if t["kind"] == kind for c in t["resources"]]


@pytest.mark.timeout(1500)
def test_a_new_profile_from_the_dry_run_to_runs_that_reuse_each_others_artifacts(
        home: Path, tmp_path: Path, aws_cloud: AwsCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, aws_cloud)

    # 1. The dry run right after `config add`: the plan and its price, nothing created.
    dry = dstack("run", "train", "--dry-run")
    plan = json.loads(dry.stdout)
    assert [s["name"] for s in plan["stacks"]] == ["workspace-ci", "run-<name>"]
    workspace = {r["type"] for r in plan["stacks"][0]["resources"]}
    assert {"aws:s3/bucket:Bucket", "aws:iam/role:Role"} <= workspace
    assert plan["instance"]["type"] == "aws:ec2/instance:Instance"
    assert plan["instance"]["price_per_hour"].startswith("$")
    assert "would bring up stack workspace-ci" in dry.stderr
    assert aws_cloud.buckets() == []
    assert not (home / "state" / ".pulumi" / "stacks").exists()

    # 2. The first run on the new profile: the workspace, then the run, on a bare image
    #    (the instance installs everything); artifacts reach the bucket while the job runs.
    release = tmp_path / "release"
    out, err = tmp_path / "train.out", tmp_path / "train.err"
    proc = dstack.popen("run", "train", "--epochs", "2", "--env", f"RELEASE={release}",
                        "--tag", "v1", out=out, err=err)
    name = wait_for("the run's name", lambda: SUBMITTED.search(run_output(out, err)), 120)[1]
    artifact = f"runs/{name}/artifacts/checkpoint/model.json"
    wait_for("the checkpoint in the bucket while the job runs",
             lambda: BUCKET in aws_cloud.buckets() and aws_cloud.keys(BUCKET, artifact), 900)
    assert proc.poll() is None  # the job is still running: it waits for `release`
    release.touch()
    assert wait_exit(proc, 300) == 0, run_output(out, err)
    assert "trained ['--epochs', '2']" in out.read_text()
    assert "creating the workspace of profile ci" in err.read_text()
    [first] = [i for i in aws_cloud.ec2_instances() if
               {"Key": "dstack:run", "Value": name} in i.get("Tags", [])]
    assert first["State"]["Name"] == "terminated"
    spec = json.loads((aws_cloud.world / "instances" / f"aws-{first['InstanceId']}" /
                       "spec.json").read_text())
    assert "AKIAUSERKEY" not in json.dumps(spec)  # the instance used its role's credentials
    nothing_left(aws_cloud)

    # 3. A run that depends on it (`train:latest`), a failing one, a dependency by tag.
    baked(dstack, baked_image, dstack_wheel)
    evaluated = dstack("run", "evaluate")
    assert "evaluated [1, 2, 3]" in evaluated.stdout
    failed = dstack("run", "fail", expect=3)
    assert "about to fail" in failed.stdout
    by_tag = dstack("run", "python", "evaluate.py", "--dep", ":v1")
    assert "evaluated [1, 2, 3]" in by_tag.stdout

    # 4. What the user sees afterwards: ps, logs, artifacts, tags, audit.
    rows = {r["run"]: r for r in dstack.ps()}
    assert rows[name]["status"] == "done" and rows[name]["backend"] == "aws"
    assert sorted(r["status"] for r in rows.values()) == ["done", "done", "done", "failed"]
    assert "trained" in dstack("logs", name).stdout
    listed = dstack.json("artifacts", "list", name)
    assert [f["path"] for f in listed["files"]] == ["checkpoint/model.json"]
    got = tmp_path / "downloaded"
    dstack("artifacts", "download", ":v1", "-o", str(got))
    assert json.loads((got / "checkpoint" / "model.json").read_text())["weights"] == [1, 2, 3]
    dstack("tags", "add", "best", name)
    assert {t["name"] for t in dstack.json("tags", "list")} == {"v1", "best"}
    trail = dstack.json("audit", name)
    assert ("create", "aws:ec2/instance:Instance") in resources_of(trail, "up")
    assert ("delete", "aws:ec2/instance:Instance") in resources_of(trail, "destroy")
    nothing_left(aws_cloud)


@pytest.mark.timeout(600)
def test_an_app_answers_on_the_printed_url_opened_to_the_caller_only_until_stopped(
        home: Path, tmp_path: Path, aws_cloud: AwsCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, aws_cloud)
    baked(dstack, baked_image, dstack_wheel)
    out, err = tmp_path / "api.out", tmp_path / "api.err"
    proc = dstack.popen("run", "api", out=out, err=err)
    url = wait_for("the app's URL", lambda: re.search(r"is at (http://\S+)",
                                                      run_output(out, err)), 300)[1]
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert json.loads(resp.read()) == {"hello": "from the instance"}
    [group] = aws_cloud.dstack_groups()
    rules = [(p["IpProtocol"], p.get("FromPort"), p.get("ToPort"),
              [r["CidrIp"] for r in p.get("IpRanges", [])]) for p in group["IpPermissions"]]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert rules == [("tcp", port, port, [CALLER])]
    name = submitted(run_output(out, err))
    dstack("stop", name, "-y")
    assert wait_exit(proc, 120) == 128 + 15, run_output(out, err)  # the app got SIGTERM
    assert dstack.ps(name)[0]["status"] == "stopped"
    nothing_left(aws_cloud)


@pytest.mark.timeout(600)
def test_a_detached_run_powers_its_instance_off_and_the_next_command_destroys_its_stack(
        home: Path, tmp_path: Path, aws_cloud: AwsCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, aws_cloud)
    baked(dstack, baked_image, dstack_wheel)
    name = dstack.run_detached("quick")
    wait_for("the instance to power itself off",
             lambda: aws_cloud.ec2_instances() and
             aws_cloud.ec2_instances()[0]["State"]["Name"] == "terminated", 300)
    assert dstack.stack_resource_types(name)  # the CLI is gone: the stack still records it
    assert "quick job done" in dstack("logs", name).stdout
    dstack.assert_torn_down(name)  # `dstack logs` did the housekeeping
    nothing_left(aws_cloud)


@pytest.mark.timeout(900)
def test_a_cli_killed_while_the_instance_is_created_or_the_job_runs_leaves_nothing_after_gc(
        home: Path, tmp_path: Path, aws_cloud: AwsCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, aws_cloud)
    baked(dstack, baked_image, dstack_wheel)

    # While the engine creates the instance: the run never starts its job for anyone.
    out, err = tmp_path / "a.out", tmp_path / "a.err"
    proc = dstack.popen("run", "sleeper", out=out, err=err)
    wait_for("the run's security group", aws_cloud.dstack_groups, 120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    wait_for("the engine to finish the instance",
             lambda: not (home / "state" / ".pulumi" / "locks" / "dstack").exists() or
             not any((home / "state" / ".pulumi" / "locks" / "dstack").rglob("*.json")), 120)
    dstack("gc", timeout=300)
    nothing_left(aws_cloud)

    # While the job runs: it becomes a detached run, and gc destroys it once it has ended.
    release = tmp_path / "release"
    out, err = tmp_path / "b.out", tmp_path / "b.err"
    proc = dstack.popen("run", "train", "--env", f"RELEASE={release}", out=out, err=err)
    wait_for("the job's first line", lambda: "trained" in out.read_text(), 300)
    name = submitted(run_output(out, err))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dstack("gc", timeout=300)
    assert dstack.ps(name)[0]["status"] == "running"  # a live job is not cut short
    release.touch()
    wait_for("the job to end", lambda: dstack.ps(name)[0]["status"] == "done", 300)
    dstack("gc", timeout=300)
    dstack.assert_torn_down(name)
    nothing_left(aws_cloud)


@pytest.mark.timeout(600)
def test_max_duration_powers_the_instance_off_and_interruptible_is_a_spot_request(
        home: Path, tmp_path: Path, aws_cloud: AwsCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, aws_cloud, **{instance.MINUTE_ENV: "120"})
    baked(dstack, baked_image, dstack_wheel)
    # One minute lasts 2 on the stand-in clock: a loaded machine boots in up to one.
    dstack("config", "set", "ci", "max_duration", "1m")
    ran = dstack("run", "sleeper", "--interruptible", expect=1, timeout=400)
    assert "sleeping" in ran.stdout
    assert re.search(r"failed: the runner stopped before the job finished: its instance "
                     r"i-\w+ is (shutting-down|terminated)", ran.stderr), ran.stderr
    [inst] = aws_cloud.ec2_instances()
    assert inst["State"]["Name"] == "terminated"
    assert inst.get("InstanceLifecycle") == "spot"
    nothing_left(aws_cloud)


@pytest.mark.timeout(600)
def test_an_instance_killed_from_outside_fails_its_run_with_the_reason_and_keeps_artifacts(
        home: Path, tmp_path: Path, aws_cloud: AwsCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    dstack = user(home, tmp_path, aws_cloud)
    baked(dstack, baked_image, dstack_wheel)
    out, err = tmp_path / "s.out", tmp_path / "s.err"
    proc = dstack.popen("run", "sleeper", out=out, err=err)
    name = wait_for("the run's name", lambda: SUBMITTED.search(run_output(out, err)), 120)[1]
    wait_for("the early artifact in the bucket",
             lambda: aws_cloud.keys(BUCKET, f"runs/{name}/artifacts/out/early.txt"), 300)
    [inst] = aws_cloud.ec2_instances("running")
    aws_cloud.client("ec2").terminate_instances(InstanceIds=[inst["InstanceId"]])
    instance.terminate("aws", inst["InstanceId"])  # as a spot reclaim would
    assert wait_exit(proc, 120) == 1
    assert f"its instance {inst['InstanceId']} is terminated" in err.read_text()
    row = dstack.ps(name)[0]
    assert row["status"] == "failed"
    listed = dstack.json("artifacts", "list", name)
    assert [f["path"] for f in listed["files"]] == ["out/early.txt"]
    nothing_left(aws_cloud)

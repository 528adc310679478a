"""Two teammates, two dstack homes, two machines, one AWS profile with a shared state, on
the stand-in AWS.

Alice and Bob are two IAM users of moto's account, each with their own AWS files. Bob's
`dstack` runs in a UTS namespace of its own whose host name is `machine-b`: to dstack it is
another machine, where Alice's process ids mean nothing. Both add the profile with the
same command, `dstack config add aws ci --aws-profile ci --region us-east-1 --shared`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import write_project
from tests.integration.servers import env_patch, gcs_emulator  # noqa: F401
from tests.integration.standin_clouds import (
    AwsCloud,
    Cloud,
    CloudDstack,
    GcpCloud,
    aws_cloud,  # noqa: F401
    baked_image,  # noqa: F401
    dstack_wheel,  # noqa: F401
    gcp_cloud,  # noqa: F401
    run_output,
    tls_cert,  # noqa: F401
    wait_exit,
    wait_for,
)

pytestmark = pytest.mark.cloud

ACCOUNT = "123456789012"  # moto's
BUCKET = f"dstack-{ACCOUNT}-us-east-1-ci"
STATE_BUCKET = f"{BUCKET}-state"
REMOTE = "https://git.example.com/team/ml.git"
"""Both clones' remote: the same project for both."""
WORKFLOWS = """
workflows:
  - name: prepare
    provider: bash
    commands: ["mkdir -p data", "echo rows from $(hostname) > data/rows.txt"]
    artifacts: ["data"]
  - name: train
    provider: bash
    depends-on: ["prepare:v1"]
    commands: ["echo trained on: $(cat data/rows.txt)"]
  - name: sleeper
    provider: bash
    commands: ["echo sleeping", "sleep 900"]
"""
HEARTBEAT_TIMEOUT = "45s"
"""A live runner beats every 15 s; 45 s tells a hung one from a slow one on a loaded box."""


class Teammate(CloudDstack):
    """`dstack` as one teammate runs it: their own home, AWS files and (for Bob) machine."""

    def __init__(self, home: Path, project: Path, cloud: Cloud, env: dict[str, str],
                 host: str | None) -> None:
        super().__init__(home, project, cloud, env)
        self.host = host

    def argv(self, *args: str) -> list[str]:
        argv = super().argv(*args)
        if self.host is None:
            return argv
        return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', self.host, *argv]


def iam_user(cloud: AwsCloud, folder: Path, name: str) -> dict[str, str]:
    """An IAM user of moto's account with an access key, in AWS files of its own (profile
    `ci`)."""
    iam = cloud.client("iam")
    iam.create_user(UserName=name)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    folder.mkdir(parents=True)
    (folder / "credentials").write_text(
        f"[ci]\naws_access_key_id = {key['AccessKeyId']}\n"
        f"aws_secret_access_key = {key['SecretAccessKey']}\n")
    (folder / "config").write_text("[profile ci]\nregion = us-east-1\n")
    return {"AWS_SHARED_CREDENTIALS_FILE": str(folder / "credentials"),
            "AWS_CONFIG_FILE": str(folder / "config")}


def clone(tmp_path: Path, name: str) -> Path:
    """The teammate's clone of the team's repository (one project for both)."""
    project = write_project(tmp_path / name / "project", WORKFLOWS, {})
    for git in (["init", "-q"], ["remote", "add", "origin", REMOTE]):
        subprocess.run(["git", *git], cwd=project, check=True)
    return project


def teammate(tmp_path: Path, cloud: AwsCloud, name: str, host: str | None,
             image: Path, wheel: Path) -> Teammate:
    """A teammate with the project, who joined the team's profile `ci`."""
    files = iam_user(cloud, tmp_path / name / "aws", name)
    user = Teammate(tmp_path / name / "home", clone(tmp_path, name), cloud,
                    {**files, "DSTACK_WHEEL": str(wheel)}, host)
    added = user("config", "add", "aws", "ci", "--aws-profile", "ci", "--region", "us-east-1",
                 "--shared", "--default")
    assert f"user/{name}" in added.stderr, added.stderr
    assert f"s3://{STATE_BUCKET}/state" in added.stderr, added.stderr
    ami = cloud.client("ec2").describe_images(Filters=[
        {"Name": "name", "Values": ["dstack-baked"]}])["Images"]
    user("config", "set", "ci", "ami", ami[0]["ImageId"] if ami else
         cloud.register_image(image))
    user("config", "set", "ci", "heartbeat_timeout", HEARTBEAT_TIMEOUT)
    return user


def submitted(text: str) -> str:
    import re

    found = re.search(r"run ([a-z0-9-]+) submitted", text)
    assert found, text
    return found.group(1)


def runner_pids(run: str) -> list[int]:
    """The processes of `run`'s runner on its (stand-in) instance."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            if b"dstack.runner" in cmd and run.encode() in cmd:
                found.append(int(entry.name))
    return found


def nothing_left(cloud: AwsCloud) -> None:
    assert cloud.ec2_instances("pending", "running", "stopping", "stopped") == []
    assert cloud.dstack_groups() == []
    assert cloud.running() == []


@pytest.mark.timeout(1500)
def test_two_teammates_share_runs_tags_artifacts_and_repair(
        tmp_path: Path, aws_cloud: AwsCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    alice = teammate(tmp_path, aws_cloud, "alice", None, baked_image, dstack_wheel)
    bob = teammate(tmp_path, aws_cloud, "bob", "machine-b", baked_image, dstack_wheel)
    assert STATE_BUCKET in aws_cloud.buckets()
    assert aws_cloud.client("s3").get_public_access_block(Bucket=STATE_BUCKET)[
        "PublicAccessBlockConfiguration"]["BlockPublicPolicy"] is True

    # Alice prepares the data and tags it; Bob trains on it.
    prepared = submitted(alice("run", "prepare", "--tag", "v1", timeout=600).stderr)
    trained = bob("run", "train", timeout=600)
    assert "trained on: rows from" in trained.stdout, trained.stdout + trained.stderr
    train_run = submitted(trained.stderr)

    # Both runs' stacks and the team's passphrase are in the state bucket.
    state = aws_cloud.keys(STATE_BUCKET, "state/")
    assert {f"state/.pulumi/stacks/dstack/run-{prepared}.json",
            f"state/.pulumi/stacks/dstack/run-{train_run}.json",
            "state/.pulumi/stacks/dstack/workspace-ci.json",
            "state/dstack/pulumi-passphrase.json"} <= set(state), state
    copies = [list((tmp_path / who / "home" / "secrets").glob("pulumi-passphrase-*"))
              for who in ("alice", "bob")]
    assert [len(c) for c in copies] == [1, 1], copies
    assert copies[0][0].read_text() == copies[1][0].read_text()

    # Bob sees Alice's run, with her as its owner; `--mine` shows his own only.
    rows = {r["run"]: r for r in bob.ps()}
    assert rows[prepared]["owner"] == f"arn:aws:iam::{ACCOUNT}:user/alice"
    assert rows[train_run]["owner"] == f"arn:aws:iam::{ACCOUNT}:user/bob"
    assert [r["run"] for r in bob.json("ps", "-a", "--mine")] == [train_run]
    table = bob("ps", "-a").stdout
    assert "user/alice" in table and "OWNER" in table
    audited = bob("audit", prepared, "--json")
    assert f"started by arn:aws:iam::{ACCOUNT}:user/alice" in audited.stderr, audited.stderr
    trail = json.loads(audited.stdout)
    kinds = [t["kind"] for t in trail]
    assert kinds[:1] == ["up"] and "destroy" in kinds, trail
    assert any(c["type"] == "aws:ec2/instance:Instance" for t in trail
               for c in t.get("resources") or []), trail

    # Bob stops Alice's detached run.
    detached = alice("run", "sleeper", "-d").stdout.strip()
    wait_for("the detached run to run",
             lambda: bob.ps(detached)[0]["status"] == "running", 300)
    bob("stop", detached, "-y", timeout=300)
    assert alice.ps(detached)[0]["status"] == "stopped"
    nothing_left(aws_cloud)

    # Alice's CLI dies mid-run while her runner still beats: Bob's gc leaves the run alone.
    out, err = tmp_path / "a.out", tmp_path / "a.err"
    proc = alice.popen("run", "sleeper", out=out, err=err)
    wait_for("the job's first line", lambda: "sleeping" in out.read_text(), 300)
    live = submitted(run_output(out, err))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gc = bob("gc", timeout=300)
    assert f"run {live} of arn:aws:iam::{ACCOUNT}:user/alice" in gc.stderr, gc.stderr
    assert "left alone" in gc.stderr
    assert bob.ps(live)[0]["status"] == "running"
    assert len(aws_cloud.ec2_instances("running")) == 1

    # Her runner hangs (the instance still runs, only the heartbeat can tell): once the
    # heartbeat is older than heartbeat_timeout, Bob's gc destroys the stack.
    pids = runner_pids(live)
    assert pids, "the runner's process was not found"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        beat = json.loads(aws_cloud.client("s3").get_object(
            Bucket=BUCKET, Key=f"runs/{live}/heartbeat.json")["Body"].read())["at"]
        time.sleep(max(0.0, beat + 45 + 2 - time.time()))
        bob("gc", timeout=300)
        row = bob.ps(live)[0]
        assert row["status"] == "failed", row
        assert "the runner stopped before the job finished" in (row["message"] or "")
        wait_for("the instance to be gone", lambda: not aws_cloud.ec2_instances(
            "pending", "running", "stopping", "stopped"), 120)
        nothing_left(aws_cloud)
    finally:
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)

    # Both tag the same run at once: one wins, and both are told the outcome.
    procs = [(who, who.popen("tags", "add", "best", run, out=tmp_path / f"{i}.out",
                             err=tmp_path / f"{i}.err"), i)
             for i, (who, run) in enumerate(((alice, prepared), (bob, train_run)))]
    told: list[tuple[int, str]] = []
    for _who, tagging, i in procs:
        code = wait_exit(tagging, 120)
        told.append((code, run_output(tmp_path / f"{i}.out", tmp_path / f"{i}.err")))
    assert sorted(code for code, _ in told) == [0, 2], told  # 2: a usage error
    winner = prepared if told[0][0] == 0 else train_run
    loser_says = next(text for code, text in told if code == 2)
    assert f"tag 'best' already points at run {winner}" in loser_says, told
    listed: list[dict[str, Any]] = bob.json("tags", "list")
    assert {t["name"]: t["run"] for t in listed}["best"] == winner


def gcp_teammate(tmp_path: Path, cloud: GcpCloud, name: str, host: str | None,
                 wheel: Path) -> Teammate:
    """A teammate with a service-account key of their own, who joined the team's `ci`."""
    assert cloud.key is not None
    key = json.loads(cloud.key.read_text())
    key["client_email"] = f"{name}@{cloud.project}.iam.gserviceaccount.com"
    (tmp_path / name).mkdir(parents=True)
    key_file = tmp_path / name / "key.json"
    key_file.write_text(json.dumps(key))
    user = Teammate(tmp_path / name / "home", clone(tmp_path, name), cloud,
                    {"DSTACK_WHEEL": str(wheel)}, host)
    added = user("config", "add", "gcp", "ci", "--project", cloud.project, "--zone",
                 "us-central1-a", "--credentials", str(key_file), "--shared", "--default")
    assert f"gs://dstack-{cloud.project}-ci-state/state" in added.stderr, added.stderr
    user("config", "set", "ci", "image", "dstack-baked")
    user("config", "set", "ci", "heartbeat_timeout", HEARTBEAT_TIMEOUT)
    return user


@pytest.mark.timeout(1200)
def test_two_teammates_share_a_gcp_profile(
        tmp_path: Path, gcp_cloud: GcpCloud,  # noqa: F811
        baked_image: Path, dstack_wheel: Path) -> None:  # noqa: F811
    from tests.standins import gcp

    gcp_cloud.image(baked_image, gcp.image_slug("dstack-baked"))
    alice = gcp_teammate(tmp_path, gcp_cloud, "alice", None, dstack_wheel)
    bob = gcp_teammate(tmp_path, gcp_cloud, "bob", "machine-b", dstack_wheel)
    assert f"dstack-{gcp_cloud.project}-ci-state" in gcp_cloud.buckets()

    prepared = submitted(alice("run", "prepare", "--tag", "v1", timeout=600).stderr)
    trained = bob("run", "train", timeout=600)
    assert "trained on: rows from" in trained.stdout, trained.stdout + trained.stderr
    state = [b.name for b in gcp_cloud.storage().list_blobs(
        f"dstack-{gcp_cloud.project}-ci-state", prefix="state/")]
    assert f"state/.pulumi/stacks/dstack/run-{prepared}.json" in state, state
    rows = {r["run"]: r for r in bob.ps()}
    assert rows[prepared]["owner"] == f"alice@{gcp_cloud.project}.iam.gserviceaccount.com"
    assert [r["run"] for r in bob.json("ps", "-a", "--mine")] == [submitted(trained.stderr)]
    assert "destroy" in [t["kind"] for t in bob.json("audit", prepared)]

    detached = alice("run", "sleeper", "-d").stdout.strip()
    wait_for("the detached run to run",
             lambda: bob.ps(detached)[0]["status"] == "running", 300)
    gc = bob("gc", timeout=300)
    assert f"run {detached} of alice@" in gc.stderr and "left alone" in gc.stderr, gc.stderr
    bob("stop", detached, "-y", timeout=300)
    assert alice.ps(detached)[0]["status"] == "stopped"
    wait_for("the VM to be gone", lambda: not gcp_cloud.running(), 120)
    assert gcp_cloud.document("instances") == []

"""dstack's real AWS programs through the real engine, against moto, with the stand-in AWS plugin.

The engine finds `pulumi-resource-aws` on PATH (`tests/standins/bin`); the stand-in turns
each resource into boto3 calls to moto's server and each instance into a local process tree
that runs the exact user-data. These tests check what moto (and the instance) hold after
`up`, an update, a replace, a power-off and `destroy`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shlex
import socket
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import boto3
import pytest

from dstack.stacks.aws_programs import AwsRun, AwsWorkspace, run_program, workspace_program
from dstack.stacks.engine import Engine
from tests.integration import stack_state
from tests.integration.harness import poll
from tests.integration.servers import Server, env_patch, moto_server  # noqa: F401 - fixtures
from tests.standins import addresses, aws, instance
from tests.standins.plugin import Config

pytestmark = pytest.mark.cloud  # the slowest tests: `-m "not cloud"` skips them

ROOT = Path(__file__).resolve().parents[2]
STANDIN_BIN = ROOT / "tests" / "standins" / "bin"
REGION = "us-east-1"
CALLER = "203.0.113.7/32"
INSTANCE = "aws:ec2/instance:Instance"
INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"


@dataclass
class Cloud:
    """moto as the tests see it, and the stand-in clouds' world folder."""

    ec2: Any
    iam: Any
    s3: Any
    world: Path


@pytest.fixture
def cloud(moto_server: Server, tmp_path: Path,  # noqa: F811
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """moto for EC2/IAM/STS/S3 through AWS_ENDPOINT_URL, a world folder, the stand-in plugin
    first on PATH; every instance still running at the end is ended."""
    world = tmp_path / "world"
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv(instance.WORLD_ENV, str(world))
    monkeypatch.setenv("PATH", f"{STANDIN_BIN}{os.pathsep}{os.environ['PATH']}")
    session = boto3.Session(region_name=REGION)
    yield Cloud(ec2=session.client("ec2"), iam=session.client("iam"),
                s3=session.client("s3"), world=world)
    for folder in (world / "instances").glob("aws-*"):
        instance.terminate("aws", folder.name.removeprefix("aws-"))


def _suffix() -> str:
    return secrets.token_hex(3)


def _wait(what: str, check: Callable[[], Any]) -> Any:
    """`poll` with the 20 s these single steps get."""
    return poll(what, check, timeout=20.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


def _instance(cloud: Cloud, instance_id: str) -> dict[str, Any]:
    """moto's record of an instance."""
    found: dict[str, Any] = cloud.ec2.describe_instances(
        InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    return found


def _attribute(cloud: Cloud, instance_id: str, name: str) -> Any:
    key = name[:1].upper() + name[1:]
    return cloud.ec2.describe_instance_attribute(InstanceId=instance_id,
                                                 Attribute=name)[key]["Value"]


def _run_groups(cloud: Cloud, run: str) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = cloud.ec2.describe_security_groups(Filters=[
        {"Name": "tag:dstack:run", "Values": [run]}])["SecurityGroups"]
    return groups


def _live_instances(cloud: Cloud, run: str) -> list[str]:
    """Instances of a run that are not terminated."""
    reservations = cloud.ec2.describe_instances(Filters=[
        {"Name": "tag:dstack:run", "Values": [run]},
        {"Name": "instance-state-name", "Values": ["pending", "running", "stopping",
                                                   "stopped"]}])["Reservations"]
    return [i["InstanceId"] for r in reservations for i in r["Instances"]]


def _instance_profile(cloud: Cloud) -> str:
    """An instance profile with a role, as the workspace stack would have made it."""
    name = f"runner-{_suffix()}"
    cloud.iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "ec2.amazonaws.com"}}]}))
    cloud.iam.create_instance_profile(InstanceProfileName=name)
    cloud.iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return name


def _run_config(cloud: Cloud, script: str, **kw: Any) -> AwsRun:
    """A run program's config with this user-data (and these overrides)."""
    run = f"standin-{_suffix()}"
    values: dict[str, Any] = {
        "run": run, "workflow": "check", "profile": "aws-test", "region": REGION,
        "instance_type": "t3.micro", "gpu": False, "spot": False, "disk_gib": 10,
        "user_data": script, "instance_profile": _instance_profile(cloud),
        "app_ports": (), "caller_cidr": CALLER, **kw}
    return AwsRun(**values)


def _ops(changes: list[Any], typ: str) -> list[str]:
    return sorted(c.op for c in changes if c.type == typ)


def _refresh(engine: Engine, stack: str, program: Callable[[], None],
             expect_no_changes: bool = False) -> list[str]:
    """`pulumi refresh` (dstack never runs one; it is how the engine calls the plugin's Read);
    the types of the resources the stack holds afterwards."""
    stack_state.refresh(engine, stack, program, expect_no_changes=expect_no_changes)
    return [r["type"] for r in stack_state.resources(engine, stack)]


# -- the workspace -------------------------------------------------------------------------------


def test_workspace_up_update_destroy(cloud: Cloud, home: Path) -> None:
    engine = Engine(home)
    cfg = AwsWorkspace(profile=f"ws-{_suffix()}", region=REGION)
    stack = f"workspace-{cfg.profile}"
    outputs, created = engine.up(stack, lambda: workspace_program(cfg))
    bucket = outputs["bucket"]
    assert bucket.startswith(f"dstack-{cfg.profile}-") and len(bucket) == len(
        f"dstack-{cfg.profile}-") + 7
    assert len(created) == 10 and {c.op for c in created} == {"create"}

    s3 = cloud.s3
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    [rule] = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert block == {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                     "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
    ownership = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert ownership == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    policy = json.loads(aws.policy_file(bucket).read_text())  # see aws.moto_evaluable
    [deny] = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {
        "Bool": {"aws:SecureTransport": "false"}}
    [lifecycle] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=bucket)["TagSet"]}
    assert tags["dstack:profile"] == cfg.profile

    role = outputs["role"]
    trust = cloud.iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    [policy_name] = cloud.iam.list_role_policies(RoleName=role)["PolicyNames"]
    doc = cloud.iam.get_role_policy(RoleName=role, PolicyName=policy_name)["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    assert {r for s in doc["Statement"] for r in s["Resource"]} == {
        f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}
    profile = cloud.iam.get_instance_profile(
        InstanceProfileName=outputs["instance_profile"])["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [role]

    # Every type reads back (a refresh calls Read) with nothing changed.
    _refresh(engine, stack, lambda: workspace_program(cfg), expect_no_changes=True)

    # A changed input updates the one resource in place; the auto-names stay.
    changed = replace(cfg, noncurrent_days=60)
    outputs2, updated = engine.up(stack, lambda: workspace_program(changed))
    assert [(c.op, c.name) for c in updated] == [("update", "lifecycle")]
    assert outputs2["bucket"] == bucket and outputs2["role"] == role
    [lifecycle] = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert lifecycle["NoncurrentVersionExpiration"]["NoncurrentDays"] == 60

    deleted = engine.destroy(stack, lambda: workspace_program(changed))
    assert len(deleted) == 10 and {c.op for c in deleted} == {"delete"}
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert role not in [r["RoleName"] for r in cloud.iam.list_roles()["Roles"]]
    assert profile["InstanceProfileName"] not in [
        p["InstanceProfileName"] for p in cloud.iam.list_instance_profiles()["InstanceProfiles"]]


# -- runs ----------------------------------------------------------------------------------------


def test_run_up_update_replace_destroy(cloud: Cloud, home: Path) -> None:
    engine = Engine(home)
    port = _free_port()
    python = shlex.quote(sys.executable)
    script = (
        "#!/bin/bash\n"
        "mkdir -p /opt/app && echo written-on-the-instance > /opt/app/marker\n"
        "echo user-data ran\n"
        f"{python} -c 'import boto3; print(\"as\", boto3.client(\"sts\")"
        ".get_caller_identity()[\"Arn\"])'\n"
        f"exec {python} -m http.server {port} --bind 0.0.0.0 --directory /opt\n")
    cfg = _run_config(cloud, script, spot=True, app_ports=(port,))
    stack = f"run-{cfg.run}"
    outputs, created = engine.up(stack, lambda: run_program(cfg))
    assert _ops(created, INSTANCE) == ["create"]
    instance_id, public_ip = outputs["instance_id"], outputs["public_ip"]
    assert public_ip == addresses.lookup("aws", instance_id)
    assert public_ip.startswith("127.0.0.") and public_ip != "127.0.0.1"

    # The firewall: only the app port from the caller in, everything out.
    [group] = _run_groups(cloud, cfg.run)
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissions"]] == [("tcp", port, port, [CALLER])]
    assert [(p["IpProtocol"], [r["CidrIp"] for r in p["IpRanges"]])
            for p in group["IpPermissionsEgress"]] == [("-1", ["0.0.0.0/0"])]

    # The instance as moto holds it.
    found = _instance(cloud, instance_id)
    assert found["State"]["Name"] == "running"
    assert found["InstanceLifecycle"] == "spot"
    assert found["MetadataOptions"]["HttpTokens"] == "required"
    assert found["IamInstanceProfile"]["Arn"].endswith(f"/{cfg.instance_profile}")
    assert group["GroupId"] in aws.instance_groups(found)
    assert _attribute(cloud, instance_id, "instanceInitiatedShutdownBehavior") == "terminate"
    assert base64.b64decode(_attribute(cloud, instance_id, "userData")).decode() == script
    image = aws.client(Config({"region": REGION}), "ec2", "099720109477").describe_images(
        ImageIds=[found["ImageId"]])["Images"][0]
    assert image["OwnerId"] == "099720109477" and "ubuntu-jammy-22.04-amd64" in image["Name"]
    [volume] = cloud.ec2.describe_volumes(Filters=[
        {"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]
    assert (volume["Size"], volume["VolumeType"], volume["Encrypted"]) == (15, "gp3", True)

    # The user-data ran: it wrote under /opt, printed, used the role's credentials from the
    # metadata server, and serves /opt on the instance's address.
    console = _wait("the instance's boot output",
                    lambda: "as arn:" in (text := instance.console("aws", instance_id)) and text)
    assert "user-data ran" in console
    assert f"assumed-role/{cfg.instance_profile}/" in console
    url = f"http://{public_ip}:{port}/app/marker"

    def served() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            return None
    assert _wait(f"{url} to answer", served).strip() == "written-on-the-instance"

    # Inputs the provider updates in place: the same instance and rule, changed.
    bigger = replace(cfg, instance_type="t3.small", caller_cidr="198.51.100.0/24")
    outputs, changes = engine.up(stack, lambda: run_program(bigger))
    assert _ops(changes, INSTANCE) == ["update"] and _ops(changes, INGRESS) == ["update"]
    assert outputs["instance_id"] == instance_id
    assert _instance(cloud, instance_id)["InstanceType"] == "t3.small"
    [group] = _run_groups(cloud, cfg.run)
    assert [r["CidrIp"] for p in group["IpPermissions"] for r in p["IpRanges"]] == [
        "198.51.100.0/24"]

    # New user-data replaces the instance: the old one is terminated, in moto and here.
    other = replace(bigger, user_data="#!/bin/bash\necho second boot\n")
    outputs, changes = engine.up(stack, lambda: run_program(other))
    assert _ops(changes, INSTANCE) == ["create", "delete", "replace"]
    second = outputs["instance_id"]
    assert second != instance_id
    assert _instance(cloud, instance_id)["State"]["Name"] == "terminated"
    assert instance.state("aws", instance_id) == "terminated"
    assert addresses.lookup("aws", instance_id) is None
    _wait("the second boot", lambda: "second boot" in instance.console("aws", second))

    deleted = engine.destroy(stack, lambda: run_program(other))
    assert _ops(deleted, INSTANCE) == ["delete"]
    assert _live_instances(cloud, cfg.run) == []
    assert _run_groups(cloud, cfg.run) == []
    assert instance.state("aws", second) == "terminated"


def test_own_image_and_power_off(cloud: Cloud, home: Path) -> None:
    engine = Engine(home)
    ami = cloud.ec2.register_image(Name=f"baked-{_suffix()}")["ImageId"]
    disk = cloud.world / "images" / ami / "baked"
    disk.mkdir(parents=True)
    (disk / "version").write_text("baked-image-v1\n")
    script = "#!/bin/bash\ncat /opt/baked/version\necho going down\nshutdown -h now\nsleep 60\n"
    cfg = _run_config(cloud, script, ami=ami)
    stack = f"run-{cfg.run}"
    outputs, _ = engine.up(stack, lambda: run_program(cfg))
    instance_id = outputs["instance_id"]
    found = _instance(cloud, instance_id)
    assert found["ImageId"] == ami and "InstanceLifecycle" not in found  # on-demand
    _wait("the power-off", lambda: instance.state("aws", instance_id) == "terminated")
    assert "baked-image-v1\ngoing down" in instance.console("aws", instance_id)
    _wait("moto to record the termination",
          lambda: _instance(cloud, instance_id)["State"]["Name"] == "terminated")
    assert addresses.lookup("aws", instance_id) is None

    # Read of a terminated instance says it is gone: a refresh drops it from the stack.
    held = _refresh(engine, stack, lambda: run_program(cfg))
    assert INSTANCE not in held and "aws:ec2/securityGroup:SecurityGroup" in held
    deleted = engine.destroy(stack, lambda: run_program(cfg))
    assert _ops(deleted, INSTANCE) == []
    assert _live_instances(cloud, cfg.run) == [] and _run_groups(cloud, cfg.run) == []


def test_destroy_after_things_vanished(cloud: Cloud, home: Path) -> None:
    engine = Engine(home)
    cfg = _run_config(cloud, "#!/bin/bash\necho up\nsleep 600\n", app_ports=(8501,), gpu=True)
    stack = f"run-{cfg.run}"
    outputs, _ = engine.up(stack, lambda: run_program(cfg))
    instance_id = outputs["instance_id"]
    image = aws.client(Config({"region": REGION}), "ec2", aws.OWNER_ALIASES["amazon"]).\
        describe_images(ImageIds=[_instance(cloud, instance_id)["ImageId"]])["Images"][0]
    assert image["Name"].startswith("Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)")
    _wait("the boot", lambda: "up" in instance.console("aws", instance_id))

    # Behind Pulumi's back: the instance terminated in moto, the app port's rule revoked.
    cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    [group] = _run_groups(cloud, cfg.run)
    cloud.ec2.revoke_security_group_ingress(GroupId=group["GroupId"],
                                            IpPermissions=group["IpPermissions"])

    deleted = engine.destroy(stack, lambda: run_program(cfg))
    assert _ops(deleted, INSTANCE) == ["delete"] and _ops(deleted, INGRESS) == ["delete"]
    assert _live_instances(cloud, cfg.run) == [] and _run_groups(cloud, cfg.run) == []
    assert instance.state("aws", instance_id) == "terminated"


def test_an_instance_that_powered_off_between_look_and_terminate_is_deleted(
        cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> None:
    # The instance's own power-off (its supervisor terminates it in moto) can land between
    # the plugin's look at it and its TerminateInstances. AWS terminates a terminated
    # instance again without an error; moto fails on its network interface.
    image = cloud.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    nic = {"DeviceIndex": 0, "DeleteOnTermination": True, "AssociatePublicIpAddress": True}
    [made] = cloud.ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,  # as the plugin
                                     NetworkInterfaces=[nic])["Instances"]
    instance_id = made["InstanceId"]
    looked = aws._describe(Config({"region": REGION}), instance_id)  # running, as it was
    assert looked[0]["State"]["Name"] != "terminated"
    cloud.ec2.terminate_instances(InstanceIds=[instance_id])  # the power-off lands here
    with pytest.raises(aws.ClientError):  # what made `dstack run` fail once in CI
        cloud.ec2.terminate_instances(InstanceIds=[instance_id])
    seen = iter([looked])
    real = aws._describe
    monkeypatch.setattr(aws, "_describe", lambda cfg, id_: next(seen, None) or real(cfg, id_))
    aws.Instance().delete(Config({"region": REGION}), instance_id, {})
    assert _instance(cloud, instance_id)["State"]["Name"] == "terminated"

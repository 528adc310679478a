"""The AWS programs under Pulumi's mocks (the aws plugin cannot run without a cloud), and the
AWS backend's plan, bootstrap script and provisioning with a stand-in engine."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest

from dstack.catalogue.offers import NoOfferError, choose_offer
from dstack.config.backends import BACKENDS, ResourceChange, load_backend
from dstack.config.profiles import Profile
from dstack.errors import BackendError, UsageError
from dstack.run.job import Job
from dstack.run.record import RunRecord
from dstack.spec.models import Resources
from dstack.stacks import caller
from dstack.stacks.aws import AwsBackend
from dstack.stacks.aws_programs import (
    CPU_AMI_NAME,
    CPU_AMI_OWNER,
    GPU_AMI_NAME,
    GPU_AMI_OWNER,
    AwsRun,
    AwsWorkspace,
    run_program,
    workspace_program,
)
from dstack.stacks.wheel import WHEEL_ENV

from . import pulumi_mocks as mocks

CALLER = "203.0.113.7/32"
SECRET = "wJalrXUtnFEMI-planted-secret-K7MDENG"
AMI_ROOT_GIB = 75
WORLD = {"0.0.0.0/0", "::/0"}


class Recorder(mocks.Recorder):
    """Answers like AWS would."""

    def state(self, args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if args.typ == "aws:s3/bucket:Bucket":
            name = args.inputs.get("bucket") or f"{args.name}-1a2b3c4"
            state.update(bucket=name, arn=f"arn:aws:s3:::{name}")
        if args.typ in ("aws:iam/role:Role", "aws:iam/instanceProfile:InstanceProfile"):
            state["name"] = f"{args.name}-5d6e7f8"
        if args.typ == "aws:ec2/instance:Instance":
            state.update(publicIp="198.51.100.7", availabilityZone="us-east-1a")
        return state

    def answer(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0dl", "rootDeviceName": "/dev/sda1", "blockDeviceMappings": [
                {"deviceName": "/dev/sda1", "ebs": {"volume_size": str(AMI_ROOT_GIB)}}]}
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": "vpc-default"}
        if args.token == "aws:ec2/getSubnet:getSubnet":
            return {"id": args.args["id"], "vpcId": "vpc-of-subnet"}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            return {"ids": ["subnet-b", "subnet-a"]}
        return {}


def run_under_mocks(program: Callable[[], None]) -> Recorder:
    """Run a program to completion under fresh mocks; return what it declared."""
    return mocks.run_under_mocks(program, Recorder())


def make_run(resources: dict[str, Any] | None = None, ports: int = 0, name: str = "wise-cat-1",
             env: dict[str, str] | None = None, secret_env: list[str] | None = None) -> RunRecord:
    job = Job(provider="python", argv=["python", "train.py"], ports=ports,
              resources=Resources.model_validate(resources or {}).model_dump(
                  mode="json", exclude_none=True),
              env=env or {}, secret_env=secret_env or [])
    return RunRecord(name=name, workflow="train", provider="python", profile="prod",
                     backend="aws", job=job, stack=f"run-{name}")


def run_config(**changes: Any) -> AwsRun:
    base: dict[str, Any] = dict(
        run="wise-cat-1", workflow="train", profile="prod", region="us-east-1",
        instance_type="g5.xlarge", gpu=True, spot=False, disk_gib=200,
        user_data="#!/usr/bin/env bash\nexec true\n", instance_profile="runner-5d6e7f8",
        app_ports=(8000, 8001), caller_cidr=CALLER)
    return AwsRun(**{**base, **changes})


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "dstack-0.1.0-py3-none-any.whl"
    path.write_bytes(b"not really a wheel")
    monkeypatch.setenv(WHEEL_ENV, str(path))
    return path


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, wheel: Path) -> AwsBackend:
    monkeypatch.setenv(caller.CALLER_ENV, CALLER)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    profile = Profile(name="prod", backend="aws", settings={
        "region": "us-east-1", "aws_profile": "ml", "bucket": "dstack-prod-bucket",
        "store_url": "s3://dstack-prod-bucket?region=us-east-1&profile=ml",
        "aws_secret_access_key": SECRET})
    return AwsBackend(profile, tmp_path / "home")


# -- the run program -------------------------------------------------------------------------


def test_the_chosen_type_is_the_cheapest_fit(backend: AwsBackend) -> None:
    run = make_run({"gpu": {"count": 1, "name": "A10G"}})
    cfg = backend.run_config(run, "#!/bin/sh\n", {"instance_profile": "runner-x"})
    assert cfg.instance_type == "g5.xlarge"
    expected = choose_offer(Resources(gpu={"count": 4}), "aws", "us-east-1")
    assert backend.offer(make_run({"gpu": 4}).job).type == expected.type
    rec = run_under_mocks(lambda: run_program(cfg))
    assert rec.one("aws:ec2/instance:Instance")["instanceType"] == "g5.xlarge"


def test_a_job_nothing_fits_is_refused_before_anything_is_created(backend: AwsBackend) -> None:
    with pytest.raises(NoOfferError):
        backend.check_resources(make_run({"gpu": {"count": 16, "name": "H100"}}).job)


def test_spot_when_interruptible_and_on_demand_otherwise() -> None:
    spot = run_under_mocks(lambda: run_program(run_config(spot=True)))
    market = spot.one("aws:ec2/instance:Instance")["instanceMarketOptions"]
    assert market == {"marketType": "spot", "spotOptions": {
        "spotInstanceType": "one-time", "instanceInterruptionBehavior": "terminate"}}
    on_demand = run_under_mocks(lambda: run_program(run_config(spot=False)))
    assert "instanceMarketOptions" not in on_demand.one("aws:ec2/instance:Instance")


def test_interruptible_resources_give_a_spot_config(backend: AwsBackend) -> None:
    run = make_run({"gpu": 1, "interruptible": True})
    cfg = backend.run_config(run, "", {"instance_profile": "p"})
    assert cfg.spot is True


@pytest.mark.parametrize(("gpu", "owner", "name"), [(True, GPU_AMI_OWNER, GPU_AMI_NAME),
                                                    (False, CPU_AMI_OWNER, CPU_AMI_NAME)])
def test_the_image_is_looked_up(gpu: bool, owner: str, name: str) -> None:
    rec = run_under_mocks(lambda: run_program(run_config(gpu=gpu)))
    lookup = rec.call_args("aws:ec2/getAmi:getAmi")
    assert lookup["owners"] == [owner] and lookup["mostRecent"] is True
    assert {"name": "name", "values": [name]} in lookup["filters"]
    assert rec.one("aws:ec2/instance:Instance")["ami"] == "ami-0dl"


def test_the_instance_is_locked_down() -> None:
    rec = run_under_mocks(lambda: run_program(run_config(disk_gib=187)))
    inst = rec.one("aws:ec2/instance:Instance")
    assert inst["metadataOptions"]["httpTokens"] == "required"
    assert inst["instanceInitiatedShutdownBehavior"] == "terminate"
    root = inst["rootBlockDevice"]
    assert root["encrypted"] is True and root["volumeType"] == "gp3"
    assert root["volumeSize"] == 187 and root["deleteOnTermination"] is True
    assert inst["iamInstanceProfile"] == "runner-5d6e7f8"
    assert inst["userDataReplaceOnChange"] is True
    assert "keyName" not in inst  # no SSH key: nothing logs in
    tags = inst["tags"]
    assert tags["dstack:run"] == "wise-cat-1" and tags["dstack:workflow"] == "train"
    assert tags["Name"] == "dstack-wise-cat-1"
    for sg in rec.of_type("aws:ec2/securityGroup:SecurityGroup"):
        assert sg["tags"]["dstack:run"] == "wise-cat-1"


def test_the_disk_is_never_smaller_than_the_image() -> None:
    rec = run_under_mocks(lambda: run_program(run_config(disk_gib=20)))
    assert rec.one("aws:ec2/instance:Instance")["rootBlockDevice"]["volumeSize"] == AMI_ROOT_GIB


def test_requested_disk_becomes_gib(backend: AwsBackend) -> None:
    cfg = backend.run_config(make_run({"disk": "200GB"}), "", {"instance_profile": "p"})
    assert cfg.disk_gib == 187  # 200 GB = 186.3 GiB, rounded up
    assert backend.run_config(make_run(), "", {"instance_profile": "p"}).disk_gib == 100


def test_ingress_only_from_the_caller_on_the_app_ports() -> None:
    rec = run_under_mocks(lambda: run_program(run_config(app_ports=(8000, 8001, 8002))))
    rules = rec.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule")
    assert sorted((r["fromPort"], r["toPort"]) for r in rules) == [(8000, 8000), (8001, 8001),
                                                                  (8002, 8002)]
    assert {r["cidrIpv4"] for r in rules} == {CALLER}
    assert all(r["ipProtocol"] == "tcp" and r["securityGroupId"] == "firewall-id"
               for r in rules)
    sg = rec.one("aws:ec2/securityGroup:SecurityGroup")
    assert "ingress" not in sg and sg["vpcId"] == "vpc-default"
    egress = rec.one("aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule")
    assert egress["ipProtocol"] == "-1"
    assert_no_world_ingress(rec)


def test_no_ports_no_ingress_and_no_address_lookup(backend: AwsBackend,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(caller.CALLER_ENV)
    monkeypatch.setattr(caller, "_checkip", _no_network)
    cfg = backend.run_config(make_run(), "", {"instance_profile": "p"})
    assert cfg.caller_cidr is None and cfg.app_ports == ()
    rec = run_under_mocks(lambda: run_program(cfg))
    assert rec.of_type("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule") == []
    assert_no_world_ingress(rec)


def test_network_settings_pick_the_vpc() -> None:
    rec = run_under_mocks(lambda: run_program(run_config(subnet_id="subnet-9")))
    assert rec.one("aws:ec2/securityGroup:SecurityGroup")["vpcId"] == "vpc-of-subnet"
    assert rec.one("aws:ec2/instance:Instance")["subnetId"] == "subnet-9"
    rec = run_under_mocks(lambda: run_program(run_config(vpc_id="vpc-7")))
    assert rec.one("aws:ec2/securityGroup:SecurityGroup")["vpcId"] == "vpc-7"
    assert rec.one("aws:ec2/instance:Instance")["subnetId"] == "subnet-a"


def test_every_resource_goes_through_the_profiles_provider() -> None:
    rec = run_under_mocks(lambda: run_program(run_config(aws_profile="ml", region="eu-west-1")))
    (prov,) = [r for r in rec.resources if r.typ == "pulumi:providers:aws"]
    assert prov.inputs["region"] == "eu-west-1" and prov.inputs["profile"] == "ml"
    for res in rec.resources:
        if res.typ != "pulumi:providers:aws":
            assert "pulumi:providers:aws::aws" in (res.provider or "")
    for call in rec.calls:
        assert "pulumi:providers:aws::aws" in (call.provider or "")


def assert_no_world_ingress(rec: Recorder) -> None:
    """The whole internet appears in one place only: the egress rule."""
    for res in rec.resources:
        if any(world in json.dumps(res.inputs) for world in WORLD):
            assert res.typ == "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"


def _no_network() -> str:
    raise AssertionError("the network must not be asked")


# -- the workspace program -------------------------------------------------------------------


def test_the_bucket_is_private_encrypted_and_versioned() -> None:
    rec = run_under_mocks(lambda: workspace_program(AwsWorkspace(profile="prod",
                                                                 region="us-east-1")))
    bucket = rec.one("aws:s3/bucket:Bucket")
    assert bucket["forceDestroy"] is False and "bucket" not in bucket  # auto-named
    (res,) = [r for r in rec.resources if r.typ == "aws:s3/bucket:Bucket"]
    assert res.name == "dstack-prod"  # becomes dstack-prod-<random suffix>
    block = rec.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock")
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy",
                                          "ignorePublicAcls", "restrictPublicBuckets"))
    sse = rec.one("aws:s3/bucketServerSideEncryptionConfiguration:"
                  "BucketServerSideEncryptionConfiguration")
    assert sse["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    versioning = rec.one("aws:s3/bucketVersioning:BucketVersioning")
    assert versioning["versioningConfiguration"]["status"] == "Enabled"
    owner = rec.one("aws:s3/bucketOwnershipControls:BucketOwnershipControls")
    assert owner["rule"]["objectOwnership"] == "BucketOwnerEnforced"
    for typ in ("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
                "aws:s3/bucketVersioning:BucketVersioning"):
        assert rec.one(typ)["bucket"] == "dstack-prod-id"
    policy = json.loads(rec.one("aws:s3/bucketPolicy:BucketPolicy")["policy"])
    (deny,) = policy["Statement"]
    assert deny["Effect"] == "Deny" and deny["Condition"]["Bool"]["aws:SecureTransport"] == "false"


def test_a_named_bucket_and_kms_encryption() -> None:
    key = "arn:aws:kms:us-east-1:111122223333:key/abc"
    cfg = AwsWorkspace(profile="prod", region="us-east-1", bucket="my-bucket", kms_key_id=key)
    rec = run_under_mocks(lambda: workspace_program(cfg))
    assert rec.one("aws:s3/bucket:Bucket")["bucket"] == "my-bucket"
    sse = rec.one("aws:s3/bucketServerSideEncryptionConfiguration:"
                  "BucketServerSideEncryptionConfiguration")["rules"][0]
    assert sse["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "aws:kms",
                                                         "kmsMasterKeyId": key}
    policy = json.loads(rec.one("aws:iam/rolePolicy:RolePolicy")["policy"])
    kms = [s for s in policy["Statement"] if any(a.startswith("kms:") for a in s["Action"])]
    assert kms and kms[0]["Resource"] == [key]


def test_the_role_reaches_that_bucket_only() -> None:
    cfg = AwsWorkspace(profile="prod", region="us-east-1", bucket="my-bucket")
    rec = run_under_mocks(lambda: workspace_program(cfg))
    trust = json.loads(rec.one("aws:iam/role:Role")["assumeRolePolicy"])
    (stmt,) = trust["Statement"]
    assert stmt["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert stmt["Action"] == "sts:AssumeRole"
    policy = json.loads(rec.one("aws:iam/rolePolicy:RolePolicy")["policy"])
    resources = {r for s in policy["Statement"] for r in s["Resource"]}
    assert resources == {"arn:aws:s3:::my-bucket", "arn:aws:s3:::my-bucket/*"}
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert actions == {"s3:GetObject", "s3:PutObject", "s3:ListBucket", "s3:DeleteObject",
                       "s3:AbortMultipartUpload"}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    for s in policy["Statement"]:  # listing on the bucket, objects under it
        assert s["Resource"] == (["arn:aws:s3:::my-bucket"] if s["Action"] == ["s3:ListBucket"]
                                 else ["arn:aws:s3:::my-bucket/*"])
    profile = rec.one("aws:iam/instanceProfile:InstanceProfile")
    assert profile["role"] == "runner-5d6e7f8"


# -- bootstrap, caller, plan, provision ------------------------------------------------------


def test_the_bootstrap_starts_the_runner_and_powers_off(backend: AwsBackend, wheel: Path) -> None:
    run = make_run({"gpu": 1}, ports=2, env={"HF_TOKEN": SECRET}, secret_env=["HF_TOKEN"])
    script = backend.bootstrap(run)
    assert "-m dstack.runner" in script and "--host 0.0.0.0" in script
    assert "--store 's3://dstack-prod-bucket?region=us-east-1'" in script  # no local profile
    assert "shutdown -h now" in script and "shutdown -h +4320" in script
    assert "export DSTACK_APP_PORTS=8000,8001" in script
    key = backend.wheel().store_key
    assert key.startswith("wheels/") and key.endswith(f"/{wheel.name}") and key in script
    assert backend.wheel().sha256 in script and "sha256sum -c" in script
    # The runner's requirements (boto3 also fetches the wheel), then the wheel `--no-deps`.
    lines = script.splitlines()
    [reqs] = [i for i, line in enumerate(lines) if "install -q --disable-pip-version-check "
              "'pydantic>=2.9,<3' 'boto3>=1.34'" in line]
    [install] = [i for i, line in enumerate(lines) if "--no-deps" in line]
    assert reqs < install and lines[install].endswith(f"--no-deps /opt/dstack/{wheel.name}")
    assert SECRET not in script
    assert "profile=ml" not in script
    check_shell(script)


def test_the_watchdog_follows_max_duration(backend: AwsBackend) -> None:
    backend.profile.settings["max_duration"] = "90m"
    assert "shutdown -h +90 " in backend.bootstrap(make_run())
    backend.profile.settings["max_duration"] = "nonsense"
    with pytest.raises(UsageError):
        backend.bootstrap(make_run())


def check_shell(script: str) -> None:
    done = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    done = subprocess.run(["shellcheck", "-s", "bash", "-"], input=script, text=True,
                          capture_output=True)
    assert done.returncode == 0, done.stdout


def test_the_callers_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(caller.CALLER_ENV, raising=False)
    profile = Profile(name="p", backend="aws", settings={})
    assert caller.caller_cidr(profile, fetch=lambda: "198.51.100.9\n") == "198.51.100.9/32"
    assert caller.caller_cidr(profile, fetch=lambda: "2001:db8::1") == "2001:db8::1/128"
    profile.settings["caller_cidr"] = "192.0.2.0/24"
    assert caller.caller_cidr(profile, fetch=_no_network) == "192.0.2.0/24"
    monkeypatch.setenv(caller.CALLER_ENV, "192.0.2.5")
    assert caller.caller_cidr(profile, fetch=_no_network) == "192.0.2.5/32"
    for world in ("0.0.0.0/0", "::/0"):
        monkeypatch.setenv(caller.CALLER_ENV, world)
        with pytest.raises(UsageError):
            caller.caller_cidr(profile)
    monkeypatch.delenv(caller.CALLER_ENV)
    profile.settings.clear()

    def offline() -> str:
        raise OSError("timed out")

    with pytest.raises(BackendError, match=caller.CALLER_ENV):
        caller.caller_cidr(profile, fetch=offline)


def test_the_plan_lists_every_resource_without_engine_or_network(
        backend: AwsBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(caller.CALLER_ENV)
    monkeypatch.setattr(caller, "_checkip", _no_network)
    monkeypatch.setattr(backend, "engine", None)
    plan = backend.plan_resources(make_run({"gpu": 1, "interruptible": True}, ports=1).job)
    types = [p["type"] for p in plan]
    assert "aws:s3/bucket:Bucket" in types  # the workspace does not exist yet
    assert types.count("aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule") == 1
    (inst,) = [p for p in plan if p["type"] == "aws:ec2/instance:Instance"]
    offer = choose_offer(Resources(gpu=1, interruptible=True), "aws", "us-east-1")
    assert inst["instance_type"] == offer.type and inst["spot"] == "yes"
    assert inst["price_per_hour"].startswith("$") and inst["metadata"] == "IMDSv2 required"
    assert all(isinstance(v, str) for p in plan for v in p.values())


def fake_engine() -> mocks.FakeEngine[Recorder]:
    """An engine that runs programs under the AWS mocks, with AWS's outputs."""
    return mocks.FakeEngine(
        Recorder,
        workspace={"bucket": "dstack-prod-bucket", "instance_profile": "runner-5d6e7f8"},
        run={"instance_id": "i-0abc", "public_ip": "198.51.100.7",
             "availability_zone": "us-east-1a"},
        created=ResourceChange("create", "aws:ec2/instance:Instance", "instance"))


def test_provision_brings_up_workspace_once_then_the_run(backend: AwsBackend) -> None:
    engine = fake_engine()
    uploaded: list[str] = []
    backend.engine = engine  # type: ignore[assignment]
    backend._put = lambda key, path: uploaded.append(key)  # type: ignore[method-assign]
    run = make_run({"gpu": 1}, ports=1)
    changes, instance = backend.provision(run, backend.bootstrap(run))
    assert engine.ups == ["workspace-prod", "run-wise-cat-1"]
    assert uploaded == [backend.wheel().store_key]
    assert instance["id"] == "i-0abc" and instance["public_ip"] == "198.51.100.7"
    assert instance["spot"] is False and instance["price_per_hour"] == backend.offer(run.job).price
    assert changes[0].type == "aws:ec2/instance:Instance"
    declared = engine.recorders["run-wise-cat-1"]
    assert SECRET not in json.dumps([r.inputs for r in declared.resources])
    assert "-m dstack.runner" in declared.one("aws:ec2/instance:Instance")["userData"]
    backend.provision(run, "#!/bin/sh\n")
    assert engine.ups.count("workspace-prod") == 1  # cached
    assert backend.teardown("wise-cat-1") == []  # never created: already torn down


def test_the_registry_loads_the_backends(tmp_path: Path) -> None:
    assert BACKENDS["aws"] == "dstack.stacks.aws:AwsBackend"
    profile = Profile(name="p", backend="aws", settings={"region": "us-east-1"})
    backend = load_backend(profile, tmp_path)
    assert isinstance(backend, AwsBackend) and backend.runner_alive(make_run()) is None
    assert backend.clear_stale_locks() == []


def test_settings_that_disagree_are_refused(tmp_path: Path) -> None:
    profile = Profile(name="p", backend="aws", settings={
        "region": "us-east-1", "bucket": "a-bucket", "store_url": "s3://other?region=us-east-1"})
    with pytest.raises(UsageError, match="store_url"):
        AwsBackend(profile, tmp_path).bucket()
    with pytest.raises(UsageError, match="region"):
        AwsBackend(Profile(name="p", backend="aws"), tmp_path).check_resources(make_run().job)


def test_the_store_urls_bucket_is_the_workspace_bucket(tmp_path: Path) -> None:
    profile = Profile(name="p", backend="aws", settings={
        "region": "eu-west-1", "aws_profile": "ml",
        "store_url": "s3://team-bucket?region=eu-west-1&profile=ml"})
    backend = AwsBackend(profile, tmp_path)
    assert backend.workspace_config().bucket == "team-bucket"
    assert backend.bucket() == "team-bucket"  # known without bringing anything up
    assert backend.instance_store_url() == "s3://team-bucket?region=eu-west-1"

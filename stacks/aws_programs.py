"""The AWS Pulumi programs: the workspace (bucket, instance role) and one run (firewall, EC2).

Each program is a plain function of a frozen config, so tests run it under Pulumi's mocks
and the backend hands `lambda: program(config)` to the engine. Every resource goes through an
explicit `aws.Provider` built from the profile's region and AWS profile name.

Workspace `workspace-<profile>`: a private S3 bucket (public access blocked four ways,
bucket-owner-enforced, encrypted AES256 or aws:kms, versioned, old versions expired, TLS
only) and an IAM role for EC2 whose only permissions are object read/write/delete and listing
on that bucket, with its instance profile.

Run `run-<name>`: a security group with no ingress but one rule per app port from the
caller's address, all egress; an EC2 instance of the chosen type from the deep-learning (GPU)
or Ubuntu 22.04 (CPU) image, spot when interruptible, IMDSv2 only, an encrypted gp3 root
disk, terminate on shutdown, the workspace's instance profile and the bootstrap as user-data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from dstack.names import slug

GPU_AMI_OWNER = "amazon"
GPU_AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
CPU_AMI_OWNER = "099720109477"  # Canonical
CPU_AMI_NAME = "ubuntu/images/hvm-ssd*/ubuntu-jammy-22.04-amd64-server-*"
BUCKET_ACTIONS = ("s3:ListBucket",)
OBJECT_ACTIONS = ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload")
KMS_ACTIONS = ("kms:Decrypt", "kms:GenerateDataKey")


@dataclass(frozen=True)
class AwsWorkspace:
    """What the workspace program declares."""

    profile: str
    region: str
    aws_profile: str | None = None
    bucket: str | None = None
    """The bucket's name; None: `dstack-<profile>-<random suffix>` chosen by Pulumi."""
    kms_key_id: str | None = None
    """A KMS key ARN for aws:kms encryption; None: AES256 (S3-managed keys)."""
    noncurrent_days: int = 30


@dataclass(frozen=True)
class AwsRun:
    """What one run's program declares."""

    run: str
    workflow: str | None
    profile: str
    region: str
    instance_type: str
    gpu: bool
    spot: bool
    disk_gib: int
    user_data: str
    instance_profile: str
    app_ports: tuple[int, ...] = ()
    caller_cidr: str | None = None
    aws_profile: str | None = None
    vpc_id: str | None = None
    subnet_id: str | None = None
    ami: str | None = None
    kms_key_id: str | None = None
    public_ip: bool = True


def provider(region: str, aws_profile: str | None) -> aws.Provider:
    """The explicit provider every resource and lookup of a program uses."""
    return aws.Provider("aws", region=region, profile=aws_profile)


def bucket_resource_name(profile: str) -> str:
    """The bucket's logical name, which Pulumi's auto-naming turns into `<it>-<suffix>`."""
    return f"dstack-{slug(profile, 40)}"


def assume_role_policy() -> str:
    """Trust policy: only EC2 may assume the role."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRole",
        "Principal": {"Service": "ec2.amazonaws.com"}}]})


def role_policy(bucket_arn: str, kms_key_arn: str | None = None) -> str:
    """The role's only permissions: list the bucket, read/write/delete its objects."""
    statements: list[dict[str, object]] = [
        {"Sid": "ListTheBucket", "Effect": "Allow", "Action": list(BUCKET_ACTIONS),
         "Resource": [bucket_arn]},
        {"Sid": "ObjectsOfTheBucket", "Effect": "Allow", "Action": list(OBJECT_ACTIONS),
         "Resource": [f"{bucket_arn}/*"]},
    ]
    if kms_key_arn:
        statements.append({"Sid": "TheBucketKey", "Effect": "Allow",
                           "Action": list(KMS_ACTIONS), "Resource": [kms_key_arn]})
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def tls_only_policy(bucket_arn: str) -> str:
    """Bucket policy: refuse every request not made over TLS."""
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Sid": "TlsOnly", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]})


def workspace_program(cfg: AwsWorkspace) -> None:
    """Declare the workspace: bucket and its settings, role, policy, instance profile."""
    opts = pulumi.ResourceOptions(provider=provider(cfg.region, cfg.aws_profile))
    tags = {"dstack:profile": cfg.profile, "dstack:stack": f"workspace-{cfg.profile}"}
    bucket = aws.s3.Bucket(bucket_resource_name(cfg.profile), bucket=cfg.bucket,
                           force_destroy=False, tags=tags, opts=opts)
    block = aws.s3.BucketPublicAccessBlock(
        "public-access-block", bucket=bucket.id, block_public_acls=True,
        block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True,
        opts=opts)
    aws.s3.BucketOwnershipControls("ownership", bucket=bucket.id,
                                   rule={"object_ownership": "BucketOwnerEnforced"}, opts=opts)
    encryption: aws.s3.BucketServerSideEncryptionConfigurationRuleArgsDict = {
        "apply_server_side_encryption_by_default":
            {"sse_algorithm": "aws:kms", "kms_master_key_id": cfg.kms_key_id} if cfg.kms_key_id
            else {"sse_algorithm": "AES256"},
        "bucket_key_enabled": bool(cfg.kms_key_id)}
    aws.s3.BucketServerSideEncryptionConfiguration(
        "encryption", bucket=bucket.id, rules=[encryption], opts=opts)
    versioning = aws.s3.BucketVersioning("versioning", bucket=bucket.id,
                                         versioning_configuration={"status": "Enabled"},
                                         opts=opts)
    aws.s3.BucketLifecycleConfiguration(
        "lifecycle", bucket=bucket.id,
        rules=[{"id": "expire-old-versions", "status": "Enabled", "filter": {"prefix": ""},
                "noncurrent_version_expiration": {"noncurrent_days": cfg.noncurrent_days},
                "abort_incomplete_multipart_upload": {"days_after_initiation": 7}}],
        opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[versioning])))
    aws.s3.BucketPolicy("tls-only", bucket=bucket.id, policy=bucket.arn.apply(tls_only_policy),
                        opts=pulumi.ResourceOptions.merge(
                            opts, pulumi.ResourceOptions(depends_on=[block])))
    role = aws.iam.Role("runner", assume_role_policy=assume_role_policy(),
                        description=f"dstack runner of profile {cfg.profile}: its bucket only",
                        tags=tags, opts=opts)
    aws.iam.RolePolicy("runner-bucket", role=role.id,
                       policy=bucket.arn.apply(lambda arn: role_policy(arn, cfg.kms_key_id)),
                       opts=opts)
    instance_profile = aws.iam.InstanceProfile("runner", role=role.name, tags=tags, opts=opts)
    pulumi.export("bucket", bucket.bucket)
    pulumi.export("bucket_arn", bucket.arn)
    pulumi.export("role", role.name)
    pulumi.export("instance_profile", instance_profile.name)
    pulumi.export("region", cfg.region)


def ami_lookup(gpu: bool) -> tuple[str, str]:
    """(owner, name filter) of the image: the deep-learning base AMI for GPUs, else Ubuntu."""
    return (GPU_AMI_OWNER, GPU_AMI_NAME) if gpu else (CPU_AMI_OWNER, CPU_AMI_NAME)


def run_tags(cfg: AwsRun) -> dict[str, str]:
    """Tags naming the run and workflow on everything a run creates."""
    return {"Name": f"dstack-{cfg.run}", "dstack:run": cfg.run,
            "dstack:workflow": cfg.workflow or "", "dstack:profile": cfg.profile}


# The engine gives a lookup's typed result, Pulumi's mocks give dicts: a field of either.
def _field(obj: object, name: str) -> Any:  # type: ignore[explicit-any]  # typed or a mock's
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def root_size(requested: int, ami: object) -> int:
    """The requested disk, but never smaller than the image's own root volume."""
    for mapping in _field(ami, "block_device_mappings") or []:
        if _field(mapping, "device_name") == _field(ami, "root_device_name"):
            size = (_field(mapping, "ebs") or {}).get("volume_size")
            if size:
                return max(requested, int(size))
    return requested


def run_program(cfg: AwsRun) -> None:
    """Declare one run: the security group and its rules, then the instance."""
    prov = provider(cfg.region, cfg.aws_profile)
    opts = pulumi.ResourceOptions(provider=prov)
    invoke = pulumi.InvokeOptions(provider=prov)
    tags = run_tags(cfg)
    subnet_id: pulumi.Input[str] | None = cfg.subnet_id
    if cfg.vpc_id:
        vpc_id: pulumi.Input[str] = cfg.vpc_id
        if subnet_id is None:
            subnets = aws.ec2.get_subnets_output(
                filters=[{"name": "vpc-id", "values": [cfg.vpc_id]}], opts=invoke)
            subnet_id = subnets.ids.apply(lambda ids: sorted(ids)[0])
    elif subnet_id is not None:
        vpc_id = aws.ec2.get_subnet_output(id=subnet_id, opts=invoke).vpc_id
    else:
        vpc_id = aws.ec2.get_vpc_output(default=True, opts=invoke).id
    group = aws.ec2.SecurityGroup(
        "firewall", vpc_id=vpc_id, description=f"dstack run {cfg.run}: app ports, caller only",
        tags=tags, opts=opts)
    for port in cfg.app_ports if cfg.caller_cidr else ():
        aws.vpc.SecurityGroupIngressRule(
            f"app-{port}", security_group_id=group.id, ip_protocol="tcp", from_port=port,
            to_port=port, cidr_ipv4=cfg.caller_cidr if ":" not in str(cfg.caller_cidr) else None,
            cidr_ipv6=cfg.caller_cidr if ":" in str(cfg.caller_cidr) else None,
            description=f"app port {port} of run {cfg.run}, from the caller only",
            tags=tags, opts=opts)
    aws.vpc.SecurityGroupEgressRule("egress", security_group_id=group.id, ip_protocol="-1",
                                    cidr_ipv4="0.0.0.0/0", description="all egress",
                                    tags=tags, opts=opts)
    if cfg.ami:
        ami_id: pulumi.Input[str] = cfg.ami
        root: pulumi.Input[int] = cfg.disk_gib
    else:
        owner, name = ami_lookup(cfg.gpu)
        ami = aws.ec2.get_ami_output(
            most_recent=True, owners=[owner],
            filters=[{"name": "name", "values": [name]},
                     {"name": "architecture", "values": ["x86_64"]},
                     {"name": "state", "values": ["available"]}],
            opts=invoke)
        ami_id = ami.id
        root = ami.apply(lambda found: root_size(cfg.disk_gib, found))
    market: aws.ec2.InstanceInstanceMarketOptionsArgsDict | None = ({
        "market_type": "spot", "spot_options": {
            "spot_instance_type": "one-time", "instance_interruption_behavior": "terminate"}}
        if cfg.spot else None)
    instance = aws.ec2.Instance(
        "instance", ami=ami_id, instance_type=cfg.instance_type, subnet_id=subnet_id,
        vpc_security_group_ids=[group.id], associate_public_ip_address=cfg.public_ip,
        iam_instance_profile=cfg.instance_profile, instance_market_options=market,
        instance_initiated_shutdown_behavior="terminate",
        metadata_options={"http_endpoint": "enabled", "http_tokens": "required",
                          "http_put_response_hop_limit": 1},
        root_block_device={"volume_size": root, "volume_type": "gp3", "encrypted": True,
                           "kms_key_id": cfg.kms_key_id, "delete_on_termination": True,
                           "tags": tags},
        user_data=cfg.user_data, user_data_replace_on_change=True, tags=tags, opts=opts)
    pulumi.export("instance_id", instance.id)
    pulumi.export("public_ip", instance.public_ip)
    pulumi.export("availability_zone", instance.availability_zone)
    pulumi.export("instance_type", cfg.instance_type)

"""The AWS backend: runs jobs on EC2 instances in the user's own account.

Profile settings: `region` (required), `aws_profile` (a named AWS profile; else the default
credential chain), `bucket` (else `dstack-<profile>-<suffix>`), `kms_key_id` (aws:kms instead
of AES256), `vpc_id` / `subnet_id` (else the default VPC), `ami` (else the looked-up image),
`public_ip` (default true), `caller_cidr`, `max_duration`, `wheel`, `store_url` (written by
`dstack config add aws`; its bucket must be the workspace bucket). The Pulumi state backend
is the profile's `state_url` (e.g. `s3://my-state-bucket`), else the local file backend.
See `docs/clouds.md`.
"""

from __future__ import annotations

import shlex
from urllib.parse import urlencode

from dstack.catalogue.offers import Offer, describe_offer, format_price
from dstack.config.backends import BackendClass
from dstack.run.job import Job
from dstack.run.record import RunRecord
from dstack.stacks.aws_programs import (
    AwsRun,
    AwsWorkspace,
    ami_lookup,
    bucket_resource_name,
    run_program,
    workspace_program,
)
from dstack.stacks.caller import planned_caller
from dstack.stacks.cloud import CloudBackend, Outputs, Program
from dstack.stacks.cloud_bootstrap import VENV, cloud_bootstrap, wheel_path
from dstack.stacks.instance_spec import (
    app_ports,
    disk_gib,
    format_duration,
    job_resources,
    max_duration_s,
)

DOWNLOAD_PY = ("import sys, boto3; "
               "boto3.client('s3', region_name=sys.argv[1]).download_file(*sys.argv[2:5])")


class AwsBackend(CloudBackend[AwsWorkspace, AwsRun]):
    """Each run an EC2 instance in its own ephemeral stack; the store is the workspace bucket."""

    name = "aws"

    # -- settings and workspace --------------------------------------------------------------

    def location(self) -> str:
        """The profile's AWS region."""
        return self.required("region", "us-east-1")

    def workspace_config(self) -> AwsWorkspace:
        """The workspace as the profile's settings describe it."""
        return AwsWorkspace(profile=self.profile.name, region=self.location(),
                            aws_profile=self.setting("aws_profile"), bucket=self.named_bucket(),
                            kms_key_id=self.setting("kms_key_id"))

    def workspace_program(self, config: AwsWorkspace) -> Program:
        """`workspace_program(config)` as the engine wants it."""
        return lambda: workspace_program(config)

    def built_store_url(self) -> str:
        """`s3://<bucket>?region=…[&profile=…]` (the instance drops the profile)."""
        query = {"region": self.location()}
        if self.setting("aws_profile"):
            query["profile"] = str(self.setting("aws_profile"))
        return f"s3://{self.bucket()}?{urlencode(query)}"

    def ask_identity(self) -> str:
        """The caller ARN of the profile's AWS credentials (an STS call)."""
        from dstack.stacks.credentials import check_aws

        return check_aws(self.profile.settings)["arn"]

    # -- runs --------------------------------------------------------------------------------

    def plan_resources(self, job: Job) -> list[dict[str, str]]:
        """Every resource a run of `job` would declare, without the engine or the network."""
        offer = self.offer(job)
        gpu = offer.gpu is not None
        caller = planned_caller(self.profile)
        plan: list[dict[str, str]] = []
        if self.cached_workspace() is None:
            ws = {"stack": self.workspace_stack}  # created by the first run
            bucket = self.named_bucket() or f"{bucket_resource_name(self.profile.name)}-…"
            s3, iam = "aws:s3/", "aws:iam/"
            plan += [{**ws, "type": t, "name": n, "what": w} for t, n, w in (
                (f"{s3}bucket:Bucket", bucket, "artifact bucket"),
                (f"{s3}bucketPublicAccessBlock:BucketPublicAccessBlock", "public-access-block",
                 "no public ACLs or policies, four ways"),
                (f"{s3}bucketOwnershipControls:BucketOwnershipControls", "ownership",
                 "bucket owner enforced (no ACLs)"),
                (f"{s3}bucketServerSideEncryptionConfiguration:"
                 "BucketServerSideEncryptionConfiguration", "encryption",
                 "aws:kms with the profile's key" if self.setting("kms_key_id") else "AES256"),
                (f"{s3}bucketVersioning:BucketVersioning", "versioning", "versioned"),
                (f"{s3}bucketLifecycleConfiguration:BucketLifecycleConfiguration", "lifecycle",
                 "old versions expire after 30 days"),
                (f"{s3}bucketPolicy:BucketPolicy", "tls-only", "refuses requests without TLS"),
                (f"{iam}role:Role", "runner", "instance role, assumed by EC2 only"),
                (f"{iam}rolePolicy:RolePolicy", "runner-bucket",
                 "read/write/list that bucket only"),
                (f"{iam}instanceProfile:InstanceProfile", "runner", "the role's instance profile"),
            )]
        vpc = self.setting("vpc_id") or ("the subnet's VPC" if self.setting("subnet_id")
                                         else "the default VPC")
        plan.append({"type": "aws:ec2/securityGroup:SecurityGroup", "name": "firewall",
                     "what": f"security group in {vpc}: no ingress but the app ports"})
        plan += [{"type": "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule",
                  "name": f"app-{port}", "what": f"tcp {port} from {caller} only"}
                 for port in app_ports(job.ports)]
        plan.append({"type": "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule",
                     "name": "egress", "what": "all egress"})
        owner, image = ami_lookup(gpu)
        plan.append({
            "type": "aws:ec2/instance:Instance", "name": "instance",
            "what": describe_offer(offer), "instance_type": offer.type,
            "price_per_hour": format_price(offer.price), "spot": "yes" if offer.spot else "no",
            "region": offer.region, "image": self.setting("ami") or f"{image} (owner {owner})",
            "disk": f"{disk_gib(job_resources(job))} GiB gp3, encrypted",
            "metadata": "IMDSv2 required", "shutdown": "terminate",
            "max_duration": format_duration(max_duration_s(job, self.profile)),
        })
        return plan

    def bootstrap(self, run: RunRecord) -> str:
        """User-data: install the exact wheel from the bucket with the instance role, run the
        runner against the bucket, power off (terminate) when it exits. No secret in it."""
        wheel = self.wheel()
        fetch = [  # boto3 is one of the runner's requirements, installed first
            shlex.join([f"{VENV}/bin/python", "-c", DOWNLOAD_PY, self.location(), self.bucket(),
                        wheel.store_key, wheel_path(wheel)]),
        ]
        return cloud_bootstrap(run, store_url=self.instance_store_url(), wheel=wheel,
                               fetch=fetch, max_duration=max_duration_s(run.job, self.profile),
                               env={"AWS_DEFAULT_REGION": self.location()})

    def run_config(self, run: RunRecord, bootstrap: str, workspace: Outputs) -> AwsRun:
        """The run program's config: offer, network, caller, workspace role."""
        offer = self.offer(run.job)
        return AwsRun(
            run=run.name, workflow=run.workflow, profile=self.profile.name,
            region=self.location(), instance_type=offer.type,
            gpu=offer.gpu is not None, spot=offer.spot,
            disk_gib=disk_gib(job_resources(run.job)), user_data=bootstrap,
            instance_profile=str(workspace["instance_profile"]),
            app_ports=tuple(app_ports(run.job.ports)), caller_cidr=self.caller(run.job),
            aws_profile=self.setting("aws_profile"), vpc_id=self.setting("vpc_id"),
            subnet_id=self.setting("subnet_id"), ami=self.setting("ami"),
            kms_key_id=self.setting("kms_key_id"),
            public_ip=str(self.setting("public_ip", "true")).lower() != "false",
        )

    def run_program(self, config: AwsRun) -> Program:
        """The run stack's program for `config`."""
        return lambda: run_program(config)

    def instance_state(self, run: RunRecord) -> tuple[str, str] | None:
        """EC2's state of the run's instance and its state reason; `gone` when EC2 no longer
        knows it; None when EC2 cannot be asked now."""
        import boto3
        import botocore.exceptions as bexc

        try:
            ec2 = boto3.Session(profile_name=self.setting("aws_profile"),
                                region_name=self.location()).client("ec2")
            found = ec2.describe_instances(InstanceIds=[str(run.instance["id"])])
        except bexc.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidInstanceID.NotFound":
                return ("gone", "EC2 no longer knows it")
            return None
        except bexc.BotoCoreError:
            return None
        for reservation in found.get("Reservations", []):
            for inst in reservation.get("Instances", []):
                reason = inst.get("StateReason", {}).get("Message") or \
                    inst.get("StateTransitionReason") or ""
                return (str(inst["State"]["Name"]), str(reason))
        return ("gone", "EC2 no longer knows it")

    def instance_info(self, run: RunRecord, cfg: AwsRun, outputs: Outputs,
                      offer: Offer) -> dict[str, object]:
        """Where the run's runner runs, as recorded in the run."""
        instance: dict[str, object] = {
            "cloud": "aws", "id": outputs.get("instance_id"), "type": cfg.instance_type,
            "region": cfg.region, "zone": outputs.get("availability_zone"),
            "public_ip": outputs.get("public_ip"), "host": outputs.get("public_ip"),
            "price_per_hour": offer.price, "spot": cfg.spot, "app_ports": list(cfg.app_ports),
            "caller_cidr": cfg.caller_cidr,
        }
        return instance


_: BackendClass = AwsBackend  # mypy checks it is a `Backend`

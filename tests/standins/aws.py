"""The stand-in `pulumi-resource-aws` (tests only): Pulumi's AWS resource types and lookups that
dstack's programs use, each a real boto3 call to moto's server.

boto3 finds moto through `AWS_ENDPOINT_URL` (the tests set it; without it the plugin refuses
to act, so it never touches a real account); clients come from
`boto3.Session(profile_name=<provider profile>, region_name=<provider region>)`. Inputs and
outputs are camelCase as on the wire of pulumi-aws 7.51.1; what replaces a resource and what
updates it in place follows the real provider. Auto-names are `<logical name>-<7 hex>`.

Instances: `aws:ec2/instance:Instance` runs `RunInstances` in moto, then boots a stand-in
instance (`tests.standins.instance`) that runs the exact user-data as a local process tree
with `/opt` from `<world>/images/<ami-id>` when that folder exists (else empty), the cloud's
endpoints in its environment (no user credentials: its role's come from its IMDSv2 metadata
server, as STS credentials moto issued for the instance profile's role) and IMDSv2 metadata.
moto's public IPs are unreachable here, so each instance's `publicIp` is a loopback address
`127.0.0.N` of its own (`tests.standins.addresses`, per world); apps on the instance bind
0.0.0.0 and so answer on it. `privateIp` is moto's. When the user-data powers the instance
off, `powered_off` records it in moto: terminated when its shutdown behaviour is terminate,
else stopped. Updates in place change moto's record only: the instance is not rebooted and
its metadata stays as it was at launch.

Images: AWS shows every account's public images to every account; moto keeps images per
account and sets an image's owner only for its built-in catalogue (`Owners` is honoured for
those and for the caller's own images). `getAmi` therefore asks moto as the caller and, for
each owner it names, as that owner's account (moto's `x-moto-account-id` header; the alias
`amazon` is the deep-learning images' account 898082745236) for its public images. When
nothing matches and the lookup is one of dstack's images (`CATALOGUE`: Ubuntu 22.04 by
Canonical 099720109477, the deep-learning base image by Amazon), the image is published once
in its owner's account: `CopyImage` of a built-in x86_64 image under the catalogue's name
(so moto records that account as its owner), then made public with `ModifyImageAttribute`.
moto's `RunInstances` does not check the image (unless its server runs with
`MOTO_ENABLE_AMI_VALIDATION`), as AWS would not for a public image of another account.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import os
import re
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

from tests.standins import addresses, instance
from tests.standins.plugin import Config, Gone, Props, Resource, Servicer, auto_name, serve

VERSION = "7.51.1"
CLOUD = "aws"
ACCOUNT_HEADER = "x-moto-account-id"
OWNER_ALIASES = {"amazon": "898082745236"}
"""Owner aliases `getAmi` resolves to the account it asks moto as."""
CATALOGUE = (
    ("099720109477", None, "ubuntu/images/hvm-ssd/ubuntu-jammy-22.04-amd64-server-20240501",
     "Canonical, Ubuntu, 22.04 LTS, amd64 jammy image build on 2024-05-01"),
    ("898082745236", "amazon",
     "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20240501",
     "Supported EC2 instances: G4dn, G5, G6, Gr6, G6e, P4, P4de, P5. NVIDIA driver, CUDA"),
)
"""(owner account, owner alias, name, description) of the images dstack's programs look up."""
CREDENTIALS_S = 12 * 3600
"""How long the role credentials an instance's metadata serves last."""

# -- clients and errors ------------------------------------------------------------------------

_clients: dict[tuple[str | None, str, str, str | None], Any] = {}
_clients_lock = threading.Lock()


def region_of(cfg: Config) -> str:
    """The provider's region (else the environment's, else us-east-1)."""
    return str(cfg.get("region") or os.environ.get("AWS_REGION")
               or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1")


def client(cfg: Config, service: str, account: str | None = None) -> Any:
    """A boto3 client of the provider's profile and region (as `account` in moto, if given)."""
    if not os.environ.get("AWS_ENDPOINT_URL"):
        raise RuntimeError("the stand-in aws plugin only talks to moto: AWS_ENDPOINT_URL is "
                           "not set")
    key = (cfg.get("profile") or None, region_of(cfg), service, account)
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            session = boto3.Session(profile_name=key[0], region_name=key[1])
            found = session.client(service)
            if account:
                def as_account(request: Any, **_: Any) -> None:
                    request.headers[ACCOUNT_HEADER] = account
                found.meta.events.register(f"before-sign.{service}", as_account)
            _clients[key] = found
    return found


_accounts: dict[tuple[str | None, str], str] = {}


def account_of(cfg: Config) -> str:
    """The caller's account id."""
    key = (cfg.get("profile") or None, region_of(cfg))
    if key not in _accounts:
        _accounts[key] = str(client(cfg, "sts").get_caller_identity()["Account"])
    return _accounts[key]


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextlib.contextmanager
def gone_if(*codes: str) -> Iterator[None]:
    """Turn a ClientError with one of `codes` into Gone."""
    try:
        yield
    except ClientError as exc:
        if _code(exc) in codes:
            raise Gone(f"{_code(exc)}: {exc}") from exc
        raise


# -- shapes --------------------------------------------------------------------------------------

_TO_API = {"id": "ID", "sseAlgorithm": "SSEAlgorithm", "kmsMasterKeyId": "KMSMasterKeyID"}
_FROM_API = {v: k for k, v in _TO_API.items()}


def to_api(value: Any) -> Any:
    """Pulumi's camelCase inputs as an AWS API shape: PascalCase keys, whole numbers as int."""
    if isinstance(value, dict):
        return {_TO_API.get(k, k[:1].upper() + k[1:]): to_api(v)
                for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [to_api(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def from_api(value: Any) -> Any:
    """An AWS API shape as Pulumi's camelCase."""
    if isinstance(value, dict):
        return {_FROM_API.get(k, k[:1].lower() + k[1:]): from_api(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_api(v) for v in value]
    return value


def tag_list(tags: Any) -> list[dict[str, str]]:
    """`{k: v}` as `[{"Key": k, "Value": v}]`."""
    return [{"Key": str(k), "Value": str(v)} for k, v in sorted((tags or {}).items())]


def tag_dict(tags: Any) -> dict[str, str]:
    """`[{"Key": k, "Value": v}]` as `{k: v}`."""
    return {t["Key"]: t["Value"] for t in tags or []}


def _filters(filters: Any) -> list[dict[str, Any]]:
    return [{"Name": f["name"], "Values": list(f["values"])} for f in filters or []]


def _int(value: Any) -> int:
    return int(float(value))


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value or "")


def _policy(found: Any, old: Any) -> Any:
    """A policy document as read back: the old text when it says the same."""
    doc = json.loads(found) if isinstance(found, str) else found
    try:
        if isinstance(old, str) and json.loads(old) == doc:
            return old
    except ValueError:
        pass
    return found if isinstance(found, str) else json.dumps(doc)


def _changed(olds: Props, news: Props, key: str) -> bool:
    return bool(olds.get(key) != news.get(key))


def _named(name: str, seed: bytes, olds: Props, news: Props, key: str = "name",
           prefix_key: str = "namePrefix", limit: int = 63, lower: bool = False) -> Props:
    """The inputs with `key` set: explicit, else `<prefix><26 hex>` when the prefix input is
    set, else Pulumi's auto-name `<logical name>-<7 hex>` (kept from the old inputs)."""
    if news.get(key):
        return news
    prefix = news.get(prefix_key)
    if prefix:
        value = auto_name(str(prefix), seed, olds, key, sep="", length=26, limit=limit)
    else:
        value = auto_name(name, seed, olds, key, limit=limit)
    return {**news, key: value.lower() if lower else value}


# -- S3 ------------------------------------------------------------------------------------------

_HOSTED_ZONES = {"us-east-1": "Z3AQBSTGFYJSTF", "us-east-2": "Z2O1EMRO9K5GLX",
                 "us-west-1": "Z2F56UZL2M1ACD", "us-west-2": "Z3BJ6K6RIION7M",
                 "eu-west-1": "Z1BKCTXD74EZPE", "eu-central-1": "Z21DNDUVLTQW6Q"}


class Bucket(Resource):
    """`aws:s3/bucket:Bucket` (id: the bucket's name)."""

    replace_on = frozenset({"bucket", "bucketPrefix", "objectLockEnabled"})

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        return _named(name, seed, olds, news, "bucket", "bucketPrefix", lower=True)

    def _outputs(self, cfg: Config, bucket: str, inputs: Props) -> Props:
        region = region_of(cfg)
        return {"arn": f"arn:aws:s3:::{bucket}", "bucket": bucket,
                "bucketDomainName": f"{bucket}.s3.amazonaws.com",
                "bucketRegionalDomainName": f"{bucket}.s3.{region}.amazonaws.com",
                "hostedZoneId": _HOSTED_ZONES.get(region, ""), "region": region,
                "forceDestroy": bool(inputs.get("forceDestroy")),
                "objectLockEnabled": bool(inputs.get("objectLockEnabled")),
                "tagsAll": dict(inputs.get("tags") or {})}

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        s3, bucket = client(cfg, "s3"), str(inputs["bucket"])
        with contextlib.suppress(ClientError):  # AWS says "already owned by you" in us-east-1
            s3.head_bucket(Bucket=bucket)
            raise RuntimeError(f"creating S3 Bucket ({bucket}): BucketAlreadyExists")
        args: Props = {"Bucket": bucket}
        if region_of(cfg) != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region_of(cfg)}
        if inputs.get("objectLockEnabled"):
            args["ObjectLockEnabledForBucket"] = True
        s3.create_bucket(**args)
        if inputs.get("tags"):
            s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": tag_list(inputs["tags"])})
        return bucket, self._outputs(cfg, bucket, inputs)

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        s3 = client(cfg, "s3")
        with gone_if("404", "NoSuchBucket"):
            s3.head_bucket(Bucket=id_)
        try:
            tags = tag_dict(s3.get_bucket_tagging(Bucket=id_)["TagSet"])
        except ClientError:
            tags = {}
        return {**outputs, **self._outputs(cfg, id_, {**outputs, "tags": tags}), "tags": tags}

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        s3 = client(cfg, "s3")
        if _changed(olds, news, "tags"):
            if news.get("tags"):
                s3.put_bucket_tagging(Bucket=id_, Tagging={"TagSet": tag_list(news["tags"])})
            else:
                s3.delete_bucket_tagging(Bucket=id_)
        return {**news, **self._outputs(cfg, id_, news)}

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        s3 = client(cfg, "s3")
        with gone_if("NoSuchBucket", "404"):
            if outputs.get("forceDestroy"):
                for page in s3.get_paginator("list_object_versions").paginate(Bucket=id_):
                    doomed = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                              for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
                    if doomed:
                        s3.delete_objects(Bucket=id_, Delete={"Objects": doomed, "Quiet": True})
            s3.delete_bucket(Bucket=id_)


class BucketPart(Resource):
    """A bucket's sub-resource (id: the bucket's name): put on create and update, read back,
    removed on delete."""

    replace_on = frozenset({"bucket", "expectedBucketOwner"})
    missing: tuple[str, ...] = ("NoSuchBucket",)
    """Error codes that say it (or its bucket) does not exist."""

    def put(self, s3: Any, bucket: str, inputs: Props) -> None:
        raise NotImplementedError

    def get(self, s3: Any, bucket: str) -> Props:
        """Its inputs as S3 holds them now."""
        raise NotImplementedError

    def remove(self, s3: Any, bucket: str, outputs: Props) -> None:
        raise NotImplementedError

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        bucket = str(inputs["bucket"])
        self.put(client(cfg, "s3"), bucket, inputs)
        return bucket, {}

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        with gone_if(*self.missing):
            return {**outputs, **self.get(client(cfg, "s3"), id_), "bucket": id_}

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        self.put(client(cfg, "s3"), id_, news)
        return dict(news)

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        with gone_if(*self.missing):
            self.remove(client(cfg, "s3"), id_, outputs)


class PublicAccessBlock(BucketPart):
    """`aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock`."""

    missing = ("NoSuchBucket", "NoSuchPublicAccessBlockConfiguration")
    KEYS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")

    def put(self, s3: Any, bucket: str, inputs: Props) -> None:
        s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
            k[:1].upper() + k[1:]: bool(inputs.get(k)) for k in self.KEYS})

    def get(self, s3: Any, bucket: str) -> Props:
        found = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
        return {k: bool(found.get(k[:1].upper() + k[1:])) for k in self.KEYS}

    def remove(self, s3: Any, bucket: str, outputs: Props) -> None:
        s3.delete_public_access_block(Bucket=bucket)


class OwnershipControls(BucketPart):
    """`aws:s3/bucketOwnershipControls:BucketOwnershipControls`."""

    missing = ("NoSuchBucket", "OwnershipControlsNotFoundError")

    def put(self, s3: Any, bucket: str, inputs: Props) -> None:
        s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls={
            "Rules": [{"ObjectOwnership": inputs["rule"]["objectOwnership"]}]})

    def get(self, s3: Any, bucket: str) -> Props:
        rules = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
        return {"rule": {"objectOwnership": rules[0]["ObjectOwnership"]}}

    def remove(self, s3: Any, bucket: str, outputs: Props) -> None:
        s3.delete_bucket_ownership_controls(Bucket=bucket)


class Encryption(BucketPart):
    """`aws:s3/bucketServerSideEncryptionConfiguration:...` (delete: back to S3's default)."""

    missing = ("NoSuchBucket", "ServerSideEncryptionConfigurationNotFoundError")

    def put(self, s3: Any, bucket: str, inputs: Props) -> None:
        s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
            "Rules": to_api(inputs["rules"])})

    def get(self, s3: Any, bucket: str) -> Props:
        found = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
        return {"rules": from_api(found["Rules"])}

    def remove(self, s3: Any, bucket: str, outputs: Props) -> None:
        s3.delete_bucket_encryption(Bucket=bucket)


class Versioning(BucketPart):
    """`aws:s3/bucketVersioning:BucketVersioning` (delete: suspended, as the provider does)."""

    def put(self, s3: Any, bucket: str, inputs: Props) -> None:
        conf = inputs["versioningConfiguration"]
        api: Props = {"Status": conf["status"]}
        if conf.get("mfaDelete"):
            api["MFADelete"] = conf["mfaDelete"]
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration=api,
                                 **({"MFA": inputs["mfa"]} if inputs.get("mfa") else {}))

    def get(self, s3: Any, bucket: str) -> Props:
        found = s3.get_bucket_versioning(Bucket=bucket)
        conf = {"status": found.get("Status", "Disabled")}
        if found.get("MFADelete"):
            conf["mfaDelete"] = found["MFADelete"]
        return {"versioningConfiguration": conf}

    def remove(self, s3: Any, bucket: str, outputs: Props) -> None:
        if s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=bucket,
                                     VersioningConfiguration={"Status": "Suspended"})


class Lifecycle(BucketPart):
    """`aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration`."""

    missing = ("NoSuchBucket", "NoSuchLifecycleConfiguration")

    def put(self, s3: Any, bucket: str, inputs: Props) -> None:
        s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={
            "Rules": to_api(inputs["rules"])})

    def get(self, s3: Any, bucket: str) -> Props:
        return {"rules": from_api(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"])}

    def remove(self, s3: Any, bucket: str, outputs: Props) -> None:
        s3.delete_bucket_lifecycle(Bucket=bucket)


def policy_file(bucket: str) -> Path:
    """Where the stand-in keeps a bucket's policy as the program wrote it."""
    return instance.world() / "aws" / "bucket-policies" / f"{bucket}.json"


def moto_evaluable(policy: str) -> str | None:
    """The statements of `policy` that moto can evaluate (None: none).

    moto evaluates a statement's Condition without the request's context, so the TLS-only
    Deny (`aws:SecureTransport` false) matches every request and the bucket refuses all;
    AWS itself would let TLS requests through. Statements with a Condition are therefore
    kept by the stand-in only (`policy_file`); moto serves HTTPS anyway.
    """
    doc = json.loads(policy)
    kept = [st for st in doc.get("Statement", []) if "Condition" not in st]
    return json.dumps({**doc, "Statement": kept}) if kept else None


class BucketPolicy(BucketPart):
    """`aws:s3/bucketPolicy:BucketPolicy`: the statements moto can evaluate go to moto, and
    the whole policy is kept in `policy_file` (see `moto_evaluable`)."""

    missing = ("NoSuchBucket", "NoSuchBucketPolicy")
    replace_on = frozenset({"bucket"})

    def put(self, s3: Any, bucket: str, inputs: Props) -> None:
        s3.head_bucket(Bucket=bucket)  # the bucket must exist, as for the real call
        policy = str(inputs["policy"])
        evaluable = moto_evaluable(policy)
        if evaluable:
            s3.put_bucket_policy(Bucket=bucket, Policy=evaluable)
        path = policy_file(bucket)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(policy)

    def get(self, s3: Any, bucket: str) -> Props:
        s3.head_bucket(Bucket=bucket)
        try:
            return {"policy": policy_file(bucket).read_text()}
        except FileNotFoundError:
            raise Gone(f"bucket {bucket} has no policy") from None

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        found = super().read(cfg, id_, outputs)
        return {**found, "policy": _policy(found["policy"], outputs.get("policy"))}

    def remove(self, s3: Any, bucket: str, outputs: Props) -> None:
        policy_file(bucket).unlink(missing_ok=True)
        s3.delete_bucket_policy(Bucket=bucket)


# -- IAM -----------------------------------------------------------------------------------------


def _retag(add: Callable[..., Any], remove: Callable[..., Any], olds: Props,
           news: Props, **ident: Any) -> None:
    """Apply a change of `tags` with an IAM/EC2-style tag and untag call."""
    old, new = olds.get("tags") or {}, news.get("tags") or {}
    gone = [k for k in old if k not in new]
    if gone:
        remove(**ident, TagKeys=gone)
    if new and new != old:
        add(**ident, Tags=tag_list(new))


class Role(Resource):
    """`aws:iam/role:Role` (id: its name)."""

    replace_on = frozenset({"name", "namePrefix", "path"})

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        return _named(name, seed, olds, news, limit=64)

    @staticmethod
    def _outputs(role: Props) -> Props:
        return {"arn": role["Arn"], "name": role["RoleName"], "uniqueId": role["RoleId"],
                "createDate": _iso(role.get("CreateDate")), "path": role.get("Path", "/"),
                "maxSessionDuration": role.get("MaxSessionDuration", 3600),
                "description": role.get("Description", ""),
                "tagsAll": tag_dict(role.get("Tags"))}

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        args: Props = {"RoleName": inputs["name"],
                       "AssumeRolePolicyDocument": inputs["assumeRolePolicy"],
                       "Path": inputs.get("path") or "/"}
        if inputs.get("description"):
            args["Description"] = inputs["description"]
        if inputs.get("maxSessionDuration"):
            args["MaxSessionDuration"] = _int(inputs["maxSessionDuration"])
        if inputs.get("permissionsBoundary"):
            args["PermissionsBoundary"] = inputs["permissionsBoundary"]
        if inputs.get("tags"):
            args["Tags"] = tag_list(inputs["tags"])
        role = client(cfg, "iam").create_role(**args)["Role"]
        return role["RoleName"], {"forceDetachPolicies": False, **self._outputs(role)}

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        with gone_if("NoSuchEntity"):
            role = client(cfg, "iam").get_role(RoleName=id_)["Role"]
        return {**outputs, **self._outputs(role), "assumeRolePolicy": _policy(
            role["AssumeRolePolicyDocument"], outputs.get("assumeRolePolicy"))}

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        iam = client(cfg, "iam")
        if _changed(olds, news, "assumeRolePolicy"):
            iam.update_assume_role_policy(RoleName=id_, PolicyDocument=news["assumeRolePolicy"])
        if _changed(olds, news, "description") or _changed(olds, news, "maxSessionDuration"):
            args: Props = {"RoleName": id_, "Description": news.get("description") or ""}
            if news.get("maxSessionDuration"):
                args["MaxSessionDuration"] = _int(news["maxSessionDuration"])
            iam.update_role(**args)
        if _changed(olds, news, "tags"):
            _retag(iam.tag_role, iam.untag_role, olds, news, RoleName=id_)
        role = iam.get_role(RoleName=id_)["Role"]
        return {"forceDetachPolicies": False, **news, **self._outputs(role)}

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        iam = client(cfg, "iam")
        with gone_if("NoSuchEntity"):
            for profile in iam.list_instance_profiles_for_role(RoleName=id_)["InstanceProfiles"]:
                iam.remove_role_from_instance_profile(
                    InstanceProfileName=profile["InstanceProfileName"], RoleName=id_)
            if outputs.get("forceDetachPolicies"):
                for policy in iam.list_role_policies(RoleName=id_)["PolicyNames"]:
                    iam.delete_role_policy(RoleName=id_, PolicyName=policy)
                for attached in iam.list_attached_role_policies(
                        RoleName=id_)["AttachedPolicies"]:
                    iam.detach_role_policy(RoleName=id_, PolicyArn=attached["PolicyArn"])
            iam.delete_role(RoleName=id_)


class RolePolicy(Resource):
    """`aws:iam/rolePolicy:RolePolicy` (id: `<role>:<name>`)."""

    replace_on = frozenset({"role", "name", "namePrefix"})

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        return _named(name, seed, olds, news, limit=128)

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        client(cfg, "iam").put_role_policy(RoleName=inputs["role"], PolicyName=inputs["name"],
                                           PolicyDocument=inputs["policy"])
        return f"{inputs['role']}:{inputs['name']}", {}

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        role, name = id_.split(":", 1)
        with gone_if("NoSuchEntity"):
            found = client(cfg, "iam").get_role_policy(RoleName=role, PolicyName=name)
        return {**outputs, "role": role, "name": name,
                "policy": _policy(found["PolicyDocument"], outputs.get("policy"))}

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        client(cfg, "iam").put_role_policy(RoleName=news["role"], PolicyName=news["name"],
                                           PolicyDocument=news["policy"])
        return dict(news)

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        role, name = id_.split(":", 1)
        with gone_if("NoSuchEntity"):
            client(cfg, "iam").delete_role_policy(RoleName=role, PolicyName=name)


class InstanceProfile(Resource):
    """`aws:iam/instanceProfile:InstanceProfile` (id: its name)."""

    replace_on = frozenset({"name", "namePrefix", "path"})

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        return _named(name, seed, olds, news, limit=128)

    @staticmethod
    def _outputs(profile: Props) -> Props:
        roles = profile.get("Roles") or []
        return {"arn": profile["Arn"], "name": profile["InstanceProfileName"],
                "uniqueId": profile["InstanceProfileId"], "path": profile.get("Path", "/"),
                "createDate": _iso(profile.get("CreateDate")),
                "role": roles[0]["RoleName"] if roles else None,
                "tagsAll": tag_dict(profile.get("Tags"))}

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        iam = client(cfg, "iam")
        args: Props = {"InstanceProfileName": inputs["name"], "Path": inputs.get("path") or "/"}
        if inputs.get("tags"):
            args["Tags"] = tag_list(inputs["tags"])
        iam.create_instance_profile(**args)
        if inputs.get("role"):
            iam.add_role_to_instance_profile(InstanceProfileName=inputs["name"],
                                             RoleName=inputs["role"])
        profile = iam.get_instance_profile(InstanceProfileName=inputs["name"])["InstanceProfile"]
        return profile["InstanceProfileName"], self._outputs(profile)

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        with gone_if("NoSuchEntity"):
            profile = client(cfg, "iam").get_instance_profile(
                InstanceProfileName=id_)["InstanceProfile"]
        return {**outputs, **self._outputs(profile)}

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        iam = client(cfg, "iam")
        if _changed(olds, news, "role"):
            if olds.get("role"):
                with contextlib.suppress(ClientError):
                    iam.remove_role_from_instance_profile(InstanceProfileName=id_,
                                                          RoleName=olds["role"])
            if news.get("role"):
                iam.add_role_to_instance_profile(InstanceProfileName=id_, RoleName=news["role"])
        if _changed(olds, news, "tags"):
            _retag(iam.tag_instance_profile, iam.untag_instance_profile, olds, news,
                   InstanceProfileName=id_)
        profile = iam.get_instance_profile(InstanceProfileName=id_)["InstanceProfile"]
        return {**news, **self._outputs(profile)}

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        iam = client(cfg, "iam")
        with gone_if("NoSuchEntity"):
            profile = iam.get_instance_profile(InstanceProfileName=id_)["InstanceProfile"]
            for role in profile.get("Roles") or []:
                iam.remove_role_from_instance_profile(InstanceProfileName=id_,
                                                      RoleName=role["RoleName"])
            iam.delete_instance_profile(InstanceProfileName=id_)


# -- EC2 security groups ------------------------------------------------------------------------

_GROUP_GONE = ("InvalidGroup.NotFound", "InvalidGroupId.NotFound", "InvalidGroupId.Malformed")


class SecurityGroup(Resource):
    """`aws:ec2/securityGroup:SecurityGroup` (id: its group id). Like the provider, it removes
    the allow-all egress rule AWS adds to a new group in a VPC."""

    replace_on = frozenset({"name", "namePrefix", "vpcId", "description"})

    def check(self, name: str, olds: Props, news: Props, seed: bytes) -> Props:
        news = {"description": "Managed by Pulumi", "revokeRulesOnDelete": False, **news}
        return _named(name, seed, olds, news, limit=255)

    def _outputs(self, cfg: Config, group: Props) -> Props:
        return {"arn": f"arn:aws:ec2:{region_of(cfg)}:{group['OwnerId']}:security-group/"
                       f"{group['GroupId']}",
                "name": group["GroupName"], "ownerId": group["OwnerId"],
                "vpcId": group.get("VpcId", ""), "description": group.get("Description", ""),
                "ingress": [], "egress": [], "tagsAll": tag_dict(group.get("Tags"))}

    def _group(self, cfg: Config, id_: str) -> Props:
        with gone_if(*_GROUP_GONE):
            groups = client(cfg, "ec2").describe_security_groups(GroupIds=[id_])
        if not groups["SecurityGroups"]:
            raise Gone(id_)
        group: Props = groups["SecurityGroups"][0]
        return group

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        if inputs.get("ingress") or inputs.get("egress"):
            raise NotImplementedError("the stand-in takes rules as their own resources only")
        ec2 = client(cfg, "ec2")
        args: Props = {"GroupName": inputs["name"], "Description": inputs["description"]}
        if inputs.get("vpcId"):
            args["VpcId"] = inputs["vpcId"]
        if inputs.get("tags"):
            args["TagSpecifications"] = [{"ResourceType": "security-group",
                                          "Tags": tag_list(inputs["tags"])}]
        group_id = ec2.create_security_group(**args)["GroupId"]
        group = self._group(cfg, group_id)
        if group.get("IpPermissionsEgress"):
            ec2.revoke_security_group_egress(GroupId=group_id,
                                             IpPermissions=group["IpPermissionsEgress"])
        return group_id, self._outputs(cfg, group)

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        return {**outputs, **self._outputs(cfg, self._group(cfg, id_))}

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        ec2 = client(cfg, "ec2")
        if _changed(olds, news, "tags"):
            _retag(ec2.create_tags, ec2.delete_tags, olds, news, Resources=[id_])
        return {**news, **self._outputs(cfg, self._group(cfg, id_))}

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        with gone_if(*_GROUP_GONE):
            client(cfg, "ec2").delete_security_group(GroupId=id_)


class GroupRule(Resource):
    """`aws:vpc/securityGroupIngressRule` or `...EgressRule` (id: the rule's `sgr-` id)."""

    replace_on = frozenset({"securityGroupId"})
    missing = (*_GROUP_GONE, "InvalidSecurityGroupRuleId.NotFound", "InvalidPermission.NotFound")

    def __init__(self, egress: bool) -> None:
        self.egress = egress

    @staticmethod
    def _permission(inputs: Props) -> Props:
        perm: Props = {"IpProtocol": str(inputs["ipProtocol"])}
        if perm["IpProtocol"] not in ("-1", "all"):
            perm["FromPort"], perm["ToPort"] = _int(inputs["fromPort"]), _int(inputs["toPort"])
        described = {"Description": inputs["description"]} if inputs.get("description") else {}
        if inputs.get("cidrIpv4"):
            perm["IpRanges"] = [{"CidrIp": inputs["cidrIpv4"], **described}]
        if inputs.get("cidrIpv6"):
            perm["Ipv6Ranges"] = [{"CidrIpv6": inputs["cidrIpv6"], **described}]
        if inputs.get("prefixListId"):
            perm["PrefixListIds"] = [{"PrefixListId": inputs["prefixListId"], **described}]
        if inputs.get("referencedSecurityGroupId"):
            perm["UserIdGroupPairs"] = [{"GroupId": inputs["referencedSecurityGroupId"],
                                         **described}]
        return perm

    def _rule(self, cfg: Config, id_: str) -> Props:
        with gone_if(*self.missing):
            rules = client(cfg, "ec2").describe_security_group_rules(
                SecurityGroupRuleIds=[id_])["SecurityGroupRules"]
        if not rules:
            raise Gone(id_)
        rule: Props = rules[0]
        return rule

    def _outputs(self, cfg: Config, rule: Props) -> Props:
        owner = rule.get("GroupOwnerId") or account_of(cfg)
        return {"arn": f"arn:aws:ec2:{region_of(cfg)}:{owner}:"
                       f"security-group-rule/{rule['SecurityGroupRuleId']}",
                "securityGroupRuleId": rule["SecurityGroupRuleId"],
                "tagsAll": tag_dict(rule.get("Tags"))}

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        ec2 = client(cfg, "ec2")
        authorize = (ec2.authorize_security_group_egress if self.egress
                     else ec2.authorize_security_group_ingress)
        args: Props = {"GroupId": inputs["securityGroupId"],
                       "IpPermissions": [self._permission(inputs)]}
        if inputs.get("tags"):
            args["TagSpecifications"] = [{"ResourceType": "security-group-rule",
                                          "Tags": tag_list(inputs["tags"])}]
        rule_id = str(authorize(**args)["SecurityGroupRules"][0]["SecurityGroupRuleId"])
        return rule_id, self._outputs(cfg, self._rule(cfg, rule_id))

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        return {**outputs, **self._outputs(cfg, self._rule(cfg, id_))}

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        ec2 = client(cfg, "ec2")
        if any(_changed(olds, news, k) for k in (
                "ipProtocol", "fromPort", "toPort", "cidrIpv4", "cidrIpv6", "prefixListId",
                "referencedSecurityGroupId", "description")):
            rule: Props = {"IpProtocol": news["ipProtocol"],
                           "FromPort": _int(news.get("fromPort", -1)),
                           "ToPort": _int(news.get("toPort", -1))}
            for key, api in (("cidrIpv4", "CidrIpv4"), ("cidrIpv6", "CidrIpv6"),
                             ("prefixListId", "PrefixListId"),
                             ("referencedSecurityGroupId", "ReferencedGroupId"),
                             ("description", "Description")):
                if news.get(key):
                    rule[api] = news[key]
            ec2.modify_security_group_rules(GroupId=news["securityGroupId"], SecurityGroupRules=[
                {"SecurityGroupRuleId": id_, "SecurityGroupRule": rule}])
        if _changed(olds, news, "tags"):
            _retag(ec2.create_tags, ec2.delete_tags, olds, news, Resources=[id_])
        return {**news, **self._outputs(cfg, self._rule(cfg, id_))}

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        ec2 = client(cfg, "ec2")
        revoke = (ec2.revoke_security_group_egress if self.egress
                  else ec2.revoke_security_group_ingress)
        with gone_if(*self.missing):
            revoke(GroupId=outputs["securityGroupId"], SecurityGroupRuleIds=[id_])


# -- EC2 instances -------------------------------------------------------------------------------

_INSTANCE_GONE = ("InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed")
_ROOT_REPLACES = ("encrypted", "kmsKeyId")
"""Settings of the root disk whose change replaces the instance (the rest change in place)."""


def image_folder(ami_id: str) -> str | None:
    """`<world>/images/<ami-id>` (a folder, or a link to one) when present: the image's /opt."""
    path = instance.world() / "images" / ami_id
    return str(path.resolve()) if path.is_dir() else None


def instance_env(cfg: Config) -> dict[str, str]:
    """What an instance's environment holds of the cloud: its endpoints and region, never the
    user's credentials or config files (a fresh instance has none; its role's come from its
    metadata server). `AWS_CA_BUNDLE` is the stand-in's certificate, as a real instance
    trusts AWS's through its system store."""
    env = {k: v for k, v in os.environ.items()
           if k in ("AWS_ENDPOINT_URL", "DSTACK_S3_ENDPOINT_URL", "AWS_CA_BUNDLE")
           or k.startswith("AWS_ENDPOINT_URL_")}
    region = region_of(cfg)
    nowhere = "/nonexistent/.aws"
    env.update(AWS_DEFAULT_REGION=region, AWS_REGION=region,
               AWS_CONFIG_FILE=f"{nowhere}/config",
               AWS_SHARED_CREDENTIALS_FILE=f"{nowhere}/credentials")
    return env


def _describe(cfg: Config, id_: str) -> tuple[Props, str]:
    """moto's record of the instance and its owner account; Gone when it is unknown."""
    with gone_if(*_INSTANCE_GONE):
        reservations = client(cfg, "ec2").describe_instances(InstanceIds=[id_])["Reservations"]
    for reservation in reservations:
        for inst in reservation["Instances"]:
            return inst, str(reservation.get("OwnerId", ""))
    raise Gone(id_)


def _role_credentials(cfg: Config, profile_name: str, session: str) -> tuple[str, str, str]:
    """(role name, instance profile arn, credentials JSON) of an instance profile, as IMDS
    serves them: STS credentials moto issues for the profile's role."""
    profile = client(cfg, "iam").get_instance_profile(
        InstanceProfileName=profile_name)["InstanceProfile"]
    if not profile.get("Roles"):
        return "", profile["Arn"], ""
    role = profile["Roles"][0]
    creds = client(cfg, "sts").assume_role(RoleArn=role["Arn"], RoleSessionName=session,
                                           DurationSeconds=CREDENTIALS_S)["Credentials"]
    expires = datetime.now(timezone.utc) + timedelta(seconds=CREDENTIALS_S)
    stamp = "%Y-%m-%dT%H:%M:%SZ"
    body = json.dumps({
        "Code": "Success", "LastUpdated": datetime.now(timezone.utc).strftime(stamp),
        "Type": "AWS-HMAC", "AccessKeyId": creds["AccessKeyId"],
        "SecretAccessKey": creds["SecretAccessKey"], "Token": creds["SessionToken"],
        "Expiration": expires.strftime(stamp)})
    return str(role["RoleName"]), str(profile["Arn"]), body


def instance_metadata(cfg: Config, inst: Props, account: str, public_ip: str | None,
                      profile_name: str | None) -> dict[str, str]:
    """The IMDSv2 paths the instance's metadata server answers."""
    md = "/latest/meta-data"
    zone = inst["Placement"]["AvailabilityZone"]
    region = region_of(cfg)
    paths = {
        f"{md}/instance-id": inst["InstanceId"],
        f"{md}/instance-type": inst["InstanceType"],
        f"{md}/ami-id": inst["ImageId"],
        f"{md}/placement/availability-zone": zone,
        f"{md}/placement/availability-zone/": zone,
        f"{md}/placement/region": region,
        f"{md}/local-ipv4": inst.get("PrivateIpAddress", ""),
        f"{md}/instance-life-cycle":
            "spot" if inst.get("InstanceLifecycle") == "spot" else "on-demand",
        "/latest/dynamic/instance-identity/document": json.dumps({
            "accountId": account, "availabilityZone": zone, "region": region,
            "instanceId": inst["InstanceId"], "imageId": inst["ImageId"],
            "instanceType": inst["InstanceType"],
            "privateIp": inst.get("PrivateIpAddress", "")}),
    }
    if public_ip:
        paths[f"{md}/public-ipv4"] = public_ip
    if profile_name:
        role, profile_arn, creds = _role_credentials(cfg, profile_name, inst["InstanceId"])
        paths[f"{md}/iam/info"] = json.dumps({"Code": "Success",
                                              "InstanceProfileArn": profile_arn})
        if role:
            paths[f"{md}/iam/security-credentials/"] = role
            paths[f"{md}/iam/security-credentials/{role}"] = creds
    return paths


def instance_groups(inst: Props) -> list[str]:
    """The instance's security group ids (of the instance, or of its network interfaces)."""
    groups = {g["GroupId"] for g in inst.get("SecurityGroups") or []}
    for nic in inst.get("NetworkInterfaces") or []:
        groups.update(g["GroupId"] for g in nic.get("Groups") or [])
    return sorted(groups)


def _user_data(inputs: Props) -> str:
    if inputs.get("userDataBase64"):
        return base64.b64decode(str(inputs["userDataBase64"])).decode()
    return str(inputs.get("userData") or "")


def _find_image(cfg: Config, ami_id: str) -> Props | None:
    """The image as the caller's account or a catalogue owner's account describes it."""
    for account in (None, *sorted({entry[0] for entry in CATALOGUE})):
        with contextlib.suppress(ClientError):
            images = client(cfg, "ec2", account).describe_images(ImageIds=[ami_id])["Images"]
            if images:
                image: Props = images[0]
                return image
    return None


def _save_launch(cfg: Config, instance_id: str) -> None:
    """What `powered_off` needs, later and in another process: the provider's region and
    profile (no secret)."""
    where = instance.folder(CLOUD, instance_id)
    where.mkdir(parents=True, exist_ok=True)
    (where / "aws.json").write_text(json.dumps({"region": region_of(cfg),
                                                "profile": cfg.get("profile") or None}))


class Instance(Resource):
    """`aws:ec2/instance:Instance`: an instance in moto and a stand-in instance running its
    user-data (id: its instance id)."""

    replace_on = frozenset({"ami", "availabilityZone", "subnetId", "associatePublicIpAddress",
                            "instanceMarketOptions", "keyName", "privateIp", "placementGroup",
                            "tenancy", "networkInterfaces", "launchTemplate",
                            "ebsBlockDevices", "ephemeralBlockDevices", "ipv6Addresses"})

    def replaces(self, olds: Props, news: Props, changed: list[str]) -> list[str]:
        found = super().replaces(olds, news, changed)
        for key in ("userData", "userDataBase64"):
            if key in changed and news.get("userDataReplaceOnChange"):
                found.append(key)
        if "rootBlockDevice" in changed:
            old, new = olds.get("rootBlockDevice") or {}, news.get("rootBlockDevice") or {}
            if any((old.get(k) or None) != (new.get(k) or None) for k in _ROOT_REPLACES):
                found.append("rootBlockDevice")
        return found

    def _outputs(self, cfg: Config, inst: Props, account: str) -> Props:
        id_ = inst["InstanceId"]
        interfaces = inst.get("NetworkInterfaces") or []
        public_ip = addresses.lookup(CLOUD, id_) if inst.get("PublicIpAddress") else None
        return {
            "arn": f"arn:aws:ec2:{region_of(cfg)}:{account}:instance/{id_}",
            "availabilityZone": inst["Placement"]["AvailabilityZone"],
            "instanceState": inst["State"]["Name"],
            "instanceType": inst["InstanceType"],
            "privateIp": inst.get("PrivateIpAddress", ""),
            "privateDns": inst.get("PrivateDnsName", ""),
            "publicIp": public_ip or "", "publicDns": "",
            "primaryNetworkInterfaceId": interfaces[0]["NetworkInterfaceId"] if interfaces else "",
            "subnetId": inst.get("SubnetId", ""),
            "instanceLifecycle": inst.get("InstanceLifecycle", ""),
            "spotInstanceRequestId": inst.get("SpotInstanceRequestId", ""),
            "vpcSecurityGroupIds": instance_groups(inst),
            "tagsAll": tag_dict(inst.get("Tags")), "outpostArn": "", "passwordData": "",
            "hostId": "", "ipv6Addresses": [],
        }

    def _run_args(self, cfg: Config, inputs: Props) -> Props:
        args: Props = {"ImageId": inputs["ami"], "InstanceType": inputs["instanceType"],
                       "MinCount": 1, "MaxCount": 1, "UserData": _user_data(inputs)}
        groups = list(inputs.get("vpcSecurityGroupIds") or [])
        if inputs.get("associatePublicIpAddress") is not None:
            nic: Props = {"DeviceIndex": 0, "DeleteOnTermination": True,
                          "AssociatePublicIpAddress": bool(inputs["associatePublicIpAddress"])}
            if inputs.get("subnetId"):
                nic["SubnetId"] = inputs["subnetId"]
            if groups:
                nic["Groups"] = groups
            args["NetworkInterfaces"] = [nic]
        else:
            if inputs.get("subnetId"):
                args["SubnetId"] = inputs["subnetId"]
            if groups:
                args["SecurityGroupIds"] = groups
        if inputs.get("availabilityZone"):
            args["Placement"] = {"AvailabilityZone": inputs["availabilityZone"]}
        if inputs.get("keyName"):
            args["KeyName"] = inputs["keyName"]
        profile = inputs.get("iamInstanceProfile")
        if profile:
            args["IamInstanceProfile"] = ({"Arn": profile} if str(profile).startswith("arn:")
                                          else {"Name": profile})
        if inputs.get("instanceMarketOptions"):
            args["InstanceMarketOptions"] = to_api(inputs["instanceMarketOptions"])
        if inputs.get("instanceInitiatedShutdownBehavior"):
            args["InstanceInitiatedShutdownBehavior"] = inputs["instanceInitiatedShutdownBehavior"]
        if inputs.get("metadataOptions"):
            args["MetadataOptions"] = to_api(inputs["metadataOptions"])
        tags = [{"ResourceType": "instance", "Tags": tag_list(inputs["tags"])}] \
            if inputs.get("tags") else []
        root = dict(inputs.get("rootBlockDevice") or {})
        if root:
            image = _find_image(cfg, str(inputs["ami"])) or {}
            ebs = to_api({k: v for k, v in root.items() if k != "tags"})
            args["BlockDeviceMappings"] = [{"DeviceName": image.get("RootDeviceName",
                                                                    "/dev/sda1"), "Ebs": ebs}]
            volume_tags = root.get("tags") or inputs.get("volumeTags")
            if volume_tags:
                tags.append({"ResourceType": "volume", "Tags": tag_list(volume_tags)})
        if tags:
            args["TagSpecifications"] = tags
        return args

    def create(self, cfg: Config, name: str, inputs: Props) -> tuple[str, Props]:
        ec2 = client(cfg, "ec2")
        id_ = str(ec2.run_instances(**self._run_args(cfg, inputs))["Instances"][0]["InstanceId"])
        try:
            inst, account = _describe(cfg, id_)
            public_ip = addresses.allocate(CLOUD, id_) if inst.get("PublicIpAddress") else None
            _save_launch(cfg, id_)
            instance.launch(instance.Spec(
                cloud=CLOUD, id=id_, script=_user_data(inputs),
                image=image_folder(str(inputs["ami"])), env=instance_env(cfg),
                metadata_style="aws",
                metadata=instance_metadata(cfg, inst, account, public_ip,
                                           inputs.get("iamInstanceProfile"))))
        except BaseException:
            with contextlib.suppress(Exception):
                self.delete(cfg, id_, inputs)
            raise
        inst, account = _describe(cfg, id_)
        return id_, self._outputs(cfg, inst, account)

    def read(self, cfg: Config, id_: str, outputs: Props) -> Props:
        inst, account = _describe(cfg, id_)
        if inst["State"]["Name"] == "terminated":
            raise Gone(id_)
        return {**outputs, **self._outputs(cfg, inst, account)}

    def update(self, cfg: Config, id_: str, olds: Props, news: Props) -> Props:
        ec2 = client(cfg, "ec2")
        if _changed(olds, news, "instanceType"):
            ec2.modify_instance_attribute(InstanceId=id_,
                                          InstanceType={"Value": news["instanceType"]})
        if _changed(olds, news, "instanceInitiatedShutdownBehavior"):
            ec2.modify_instance_attribute(InstanceId=id_, InstanceInitiatedShutdownBehavior={
                "Value": news.get("instanceInitiatedShutdownBehavior") or "stop"})
        if _changed(olds, news, "vpcSecurityGroupIds") and news.get("vpcSecurityGroupIds"):
            ec2.modify_instance_attribute(InstanceId=id_,
                                          Groups=list(news["vpcSecurityGroupIds"]))
        if _changed(olds, news, "metadataOptions") and news.get("metadataOptions"):
            ec2.modify_instance_metadata_options(InstanceId=id_,
                                                 **to_api(news["metadataOptions"]))
        for key in ("userData", "userDataBase64"):
            if _changed(olds, news, key):
                ec2.modify_instance_attribute(InstanceId=id_,
                                              UserData={"Value": _user_data(news).encode()})
        if _changed(olds, news, "iamInstanceProfile"):
            self._reassociate(ec2, id_, news.get("iamInstanceProfile"))
        if _changed(olds, news, "tags"):
            _retag(ec2.create_tags, ec2.delete_tags, olds, news, Resources=[id_])
        if _changed(olds, news, "rootBlockDevice"):
            self._update_root(ec2, id_, olds.get("rootBlockDevice") or {},
                              news.get("rootBlockDevice") or {})
        inst, account = _describe(cfg, id_)
        return {**news, **self._outputs(cfg, inst, account)}

    @staticmethod
    def _reassociate(ec2: Any, id_: str, profile: str | None) -> None:
        found = ec2.describe_iam_instance_profile_associations(
            Filters=[{"Name": "instance-id", "Values": [id_]}])["IamInstanceProfileAssociations"]
        spec = ({"Arn": profile} if str(profile).startswith("arn:") else {"Name": profile})
        if found and profile:
            ec2.replace_iam_instance_profile_association(
                IamInstanceProfile=spec, AssociationId=found[0]["AssociationId"])
        elif found:
            ec2.disassociate_iam_instance_profile(AssociationId=found[0]["AssociationId"])
        elif profile:
            ec2.associate_iam_instance_profile(IamInstanceProfile=spec, InstanceId=id_)

    @staticmethod
    def _update_root(ec2: Any, id_: str, old: Props, new: Props) -> None:
        volumes = ec2.describe_volumes(Filters=[
            {"Name": "attachment.instance-id", "Values": [id_]}])["Volumes"]
        if not volumes:
            return
        volume = volumes[0]["VolumeId"]
        if old.get("deleteOnTermination") != new.get("deleteOnTermination"):
            ec2.modify_instance_attribute(InstanceId=id_, BlockDeviceMappings=[{
                "DeviceName": volumes[0]["Attachments"][0]["Device"],
                "Ebs": {"DeleteOnTermination": new.get("deleteOnTermination") is not False}}])
        args: Props = {}
        if old.get("volumeSize") != new.get("volumeSize") and new.get("volumeSize"):
            args["Size"] = _int(new["volumeSize"])
        if old.get("volumeType") != new.get("volumeType") and new.get("volumeType"):
            args["VolumeType"] = new["volumeType"]
        if args:
            ec2.modify_volume(VolumeId=volume, **args)
        if old.get("tags") != new.get("tags"):
            _retag(ec2.create_tags, ec2.delete_tags, old, new, Resources=[volume])

    def delete(self, cfg: Config, id_: str, outputs: Props) -> None:
        try:
            inst, _ = _describe(cfg, id_)
            if inst["State"]["Name"] == "terminated":  # moto fails to terminate it twice
                raise Gone(id_)
            try:
                client(cfg, "ec2").terminate_instances(InstanceIds=[id_])
            except ClientError:
                # The instance powered itself off (its supervisor terminated it in moto)
                # since it was described: AWS terminates a terminated instance again without
                # an error, moto fails on its network interface.
                if _describe(cfg, id_)[0]["State"]["Name"] != "terminated":
                    raise
        finally:
            instance.terminate(CLOUD, id_)
            addresses.release(CLOUD, id_)


def powered_off(instance_id: str) -> None:
    """The instance's user-data powered it off: record it in moto (terminated when its
    shutdown behaviour is terminate, else stopped). Called by the instance's supervisor."""
    saved = json.loads((instance.folder(CLOUD, instance_id) / "aws.json").read_text())
    cfg = Config({k: v for k, v in saved.items() if v})
    ec2 = client(cfg, "ec2")
    behaviour = ec2.describe_instance_attribute(
        InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior",
    )["InstanceInitiatedShutdownBehavior"]["Value"]
    if behaviour == "terminate":
        ec2.terminate_instances(InstanceIds=[instance_id])
        addresses.release(CLOUD, instance_id)
    else:
        ec2.stop_instances(InstanceIds=[instance_id])


# -- lookups -------------------------------------------------------------------------------------


def _owner_account(owner: str) -> str | None:
    return OWNER_ALIASES.get(owner) or (owner if owner.isdigit() else None)


def _images(cfg: Config, args: Props) -> list[tuple[Props, str | None]]:
    """(image, owner alias) of the images matching a getAmi lookup: the caller's view in moto,
    and the public images of the accounts it names as owners."""
    owners = [str(o) for o in args.get("owners") or []]
    filters = _filters(args.get("filters"))
    query: Props = {"Filters": filters}
    if owners:
        query["Owners"] = owners
    if args.get("executableUsers"):
        query["ExecutableUsers"] = list(args["executableUsers"])
    found: dict[str, tuple[Props, str | None]] = {
        image["ImageId"]: (image, image.get("ImageOwnerAlias"))
        for image in client(cfg, "ec2").describe_images(**query)["Images"]}
    caller = account_of(cfg)
    for owner in owners:
        account = _owner_account(owner)
        if account is None or account == caller:
            continue
        theirs = client(cfg, "ec2", account).describe_images(Owners=["self"], Filters=filters)
        for image in theirs["Images"]:
            if image.get("Public"):
                found.setdefault(image["ImageId"],
                                 (image, owner if owner in OWNER_ALIASES else None))
    return list(found.values())


def _publish(cfg: Config, args: Props) -> bool:
    """Publish the catalogue images the lookup asks for in their owners' accounts; whether
    any was."""
    owners = {str(o) for o in args.get("owners") or []}
    names = [v for f in args.get("filters") or [] if f["name"] == "name" for v in f["values"]]
    published = False
    for account, alias, name, description in CATALOGUE:
        if not owners & {account, alias}:
            continue
        if names and not any(fnmatch.fnmatchcase(name, pattern) for pattern in names):
            continue
        ec2 = client(cfg, "ec2", account)
        sources = [image for image in ec2.describe_images(Filters=[
            {"Name": "architecture", "Values": ["x86_64"]},
            {"Name": "image-type", "Values": ["machine"]}])["Images"]
            if not image.get("Platform")]
        if not sources:
            continue
        copied = ec2.copy_image(SourceImageId=sources[0]["ImageId"],
                                SourceRegion=region_of(cfg), Name=name,
                                Description=description)["ImageId"]
        ec2.modify_image_attribute(ImageId=copied,
                                   LaunchPermission={"Add": [{"Group": "all"}]})
        published = True
    return published


def _ami_result(cfg: Config, image: Props, alias: str | None, args: Props) -> Props:
    mappings = []
    for mapping in image.get("BlockDeviceMappings") or []:
        ebs = mapping.get("Ebs") or {}
        mappings.append({
            "deviceName": mapping.get("DeviceName", ""),
            "ebs": {"delete_on_termination": str(ebs.get("DeleteOnTermination", False)).lower(),
                    "encrypted": str(ebs.get("Encrypted", False)).lower(),
                    "iops": str(ebs.get("Iops", 0)), "snapshot_id": ebs.get("SnapshotId", ""),
                    "throughput": str(ebs.get("Throughput", 0)),
                    "volume_size": str(ebs.get("VolumeSize", 0)),
                    "volume_type": ebs.get("VolumeType", "standard")} if ebs else {},
            "noDevice": "", "virtualName": mapping.get("VirtualName", "")})
    root = next((m["ebs"].get("snapshot_id", "") for m in mappings
                 if m["deviceName"] == image.get("RootDeviceName") and m["ebs"]), "")
    return {
        **args, "id": image["ImageId"], "imageId": image["ImageId"],
        "arn": f"arn:aws:ec2:{region_of(cfg)}::image/{image['ImageId']}",
        "architecture": image.get("Architecture", ""), "blockDeviceMappings": mappings,
        "bootMode": image.get("BootMode", ""), "creationDate": image.get("CreationDate", ""),
        "deprecationTime": image.get("DeprecationTime", ""),
        "description": image.get("Description", ""), "enaSupport": bool(image.get("EnaSupport")),
        "hypervisor": image.get("Hypervisor", ""), "imageLocation": image.get("ImageLocation", ""),
        "imageOwnerAlias": alias or image.get("ImageOwnerAlias") or "",
        "imageType": image.get("ImageType", ""), "imdsSupport": image.get("ImdsSupport", ""),
        "kernelId": image.get("KernelId", ""), "lastLaunchedTime": "",
        "name": image.get("Name", ""), "ownerId": image.get("OwnerId", ""),
        "platform": image.get("Platform", ""), "platformDetails": image.get("PlatformDetails", ""),
        "productCodes": [], "public": bool(image.get("Public")),
        "ramdiskId": image.get("RamdiskId", ""), "region": region_of(cfg),
        "rootDeviceName": image.get("RootDeviceName", ""),
        "rootDeviceType": image.get("RootDeviceType", ""), "rootSnapshotId": root,
        "sriovNetSupport": image.get("SriovNetSupport", ""), "state": image.get("State", ""),
        "stateReason": {"code": "UNSET", "message": "UNSET"},
        "tags": tag_dict(image.get("Tags")), "tpmSupport": "", "uefiData": "",
        "usageOperation": image.get("UsageOperation", ""),
        "virtualizationType": image.get("VirtualizationType", ""),
    }


def get_ami(cfg: Config, args: Props) -> Props:
    """`aws:ec2/getAmi:getAmi`: one image by owners, filters, name regex, most recent."""
    images = _images(cfg, args)
    if not images and _publish(cfg, args):
        images = _images(cfg, args)
    if args.get("nameRegex"):
        pattern = re.compile(str(args["nameRegex"]))
        images = [(i, a) for i, a in images if pattern.search(i.get("Name") or "")]
    if not images:
        raise RuntimeError("Your query returned no results. Please change your search "
                           "criteria and try again.")
    if len(images) > 1 and not args.get("mostRecent"):
        raise RuntimeError("Your query returned more than one result. Please try a more "
                           "specific search criteria, or set `most_recent` attribute to true.")
    image, alias = max(images, key=lambda found: str(found[0].get("CreationDate") or ""))
    return _ami_result(cfg, image, alias, args)


def get_vpc(cfg: Config, args: Props) -> Props:
    """`aws:ec2/getVpc:getVpc`: exactly one VPC (the default one, by id, by filters)."""
    query: Props = {"Filters": _filters(args.get("filters"))}
    if args.get("default") is not None:
        query["Filters"].append({"Name": "is-default",
                                 "Values": [str(bool(args["default"])).lower()]})
    for key, name in (("cidrBlock", "cidr"), ("state", "state"), ("dhcpOptionsId",
                                                                  "dhcp-options-id")):
        if args.get(key):
            query["Filters"].append({"Name": name, "Values": [args[key]]})
    for key, value in (args.get("tags") or {}).items():
        query["Filters"].append({"Name": f"tag:{key}", "Values": [value]})
    if args.get("id"):
        query["VpcIds"] = [args["id"]]
    vpcs = client(cfg, "ec2").describe_vpcs(**query)["Vpcs"]
    if len(vpcs) != 1:
        raise RuntimeError(f"{len(vpcs)} EC2 VPCs matched; use additional constraints to "
                           "reduce matches to a single EC2 VPC")
    vpc = vpcs[0]
    return {**args, "id": vpc["VpcId"], "arn": f"arn:aws:ec2:{region_of(cfg)}:"
            f"{vpc.get('OwnerId', '')}:vpc/{vpc['VpcId']}",
            "cidrBlock": vpc.get("CidrBlock", ""), "default": bool(vpc.get("IsDefault")),
            "dhcpOptionsId": vpc.get("DhcpOptionsId", ""),
            "instanceTenancy": vpc.get("InstanceTenancy", "default"),
            "ownerId": vpc.get("OwnerId", ""), "state": vpc.get("State", ""),
            "tags": tag_dict(vpc.get("Tags")), "region": region_of(cfg),
            "cidrBlockAssociations": [
                {"associationId": a.get("AssociationId", ""), "cidrBlock": a.get("CidrBlock", ""),
                 "state": a.get("CidrBlockState", {}).get("State", "")}
                for a in vpc.get("CidrBlockAssociationSet") or []],
            "enableDnsHostnames": True, "enableDnsSupport": True,
            "enableNetworkAddressUsageMetrics": False, "mainRouteTableId": ""}


def _subnet_result(cfg: Config, subnet: Props, args: Props) -> Props:
    return {**args, "id": subnet["SubnetId"], "arn": subnet.get("SubnetArn", ""),
            "availabilityZone": subnet.get("AvailabilityZone", ""),
            "availabilityZoneId": subnet.get("AvailabilityZoneId", ""),
            "availableIpAddressCount": subnet.get("AvailableIpAddressCount", 0),
            "cidrBlock": subnet.get("CidrBlock", ""),
            "defaultForAz": bool(subnet.get("DefaultForAz")),
            "mapPublicIpOnLaunch": bool(subnet.get("MapPublicIpOnLaunch")),
            "ownerId": subnet.get("OwnerId", ""), "state": subnet.get("State", ""),
            "tags": tag_dict(subnet.get("Tags")), "vpcId": subnet.get("VpcId", ""),
            "region": region_of(cfg)}


def _subnet_query(args: Props) -> Props:
    query: Props = {"Filters": _filters(args.get("filters"))}
    for key, name in (("vpcId", "vpc-id"), ("availabilityZone", "availability-zone"),
                      ("cidrBlock", "cidr-block"), ("state", "state")):
        if args.get(key):
            query["Filters"].append({"Name": name, "Values": [args[key]]})
    if args.get("defaultForAz") is not None:
        query["Filters"].append({"Name": "default-for-az",
                                 "Values": [str(bool(args["defaultForAz"])).lower()]})
    for key, value in (args.get("tags") or {}).items():
        query["Filters"].append({"Name": f"tag:{key}", "Values": [value]})
    if args.get("id"):
        query["SubnetIds"] = [args["id"]]
    return query


def get_subnet(cfg: Config, args: Props) -> Props:
    """`aws:ec2/getSubnet:getSubnet`: exactly one subnet."""
    subnets = client(cfg, "ec2").describe_subnets(**_subnet_query(args))["Subnets"]
    if len(subnets) != 1:
        raise RuntimeError(f"{len(subnets)} EC2 Subnets matched; use additional constraints "
                           "to reduce matches to a single EC2 Subnet")
    return _subnet_result(cfg, subnets[0], args)


def get_subnets(cfg: Config, args: Props) -> Props:
    """`aws:ec2/getSubnets:getSubnets`: the ids of the matching subnets."""
    subnets = client(cfg, "ec2").describe_subnets(**_subnet_query(args))["Subnets"]
    return {**args, "id": region_of(cfg), "ids": [s["SubnetId"] for s in subnets],
            "region": region_of(cfg)}


# -- the plugin ----------------------------------------------------------------------------------

TYPES: dict[str, Resource] = {
    "aws:s3/bucket:Bucket": Bucket(),
    "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock": PublicAccessBlock(),
    "aws:s3/bucketOwnershipControls:BucketOwnershipControls": OwnershipControls(),
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration":
        Encryption(),
    "aws:s3/bucketVersioning:BucketVersioning": Versioning(),
    "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration": Lifecycle(),
    "aws:s3/bucketPolicy:BucketPolicy": BucketPolicy(),
    "aws:iam/role:Role": Role(),
    "aws:iam/rolePolicy:RolePolicy": RolePolicy(),
    "aws:iam/instanceProfile:InstanceProfile": InstanceProfile(),
    "aws:ec2/securityGroup:SecurityGroup": SecurityGroup(),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": GroupRule(egress=False),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": GroupRule(egress=True),
    "aws:ec2/instance:Instance": Instance(),
}

INVOKES: dict[str, Callable[[Config, Props], Props]] = {
    "aws:ec2/getAmi:getAmi": get_ami,
    "aws:ec2/getVpc:getVpc": get_vpc,
    "aws:ec2/getSubnets:getSubnets": get_subnets,
    "aws:ec2/getSubnet:getSubnet": get_subnet,
}

OUTPUTS: dict[str, tuple[str, ...]] = {
    "aws:s3/bucket:Bucket": ("arn", "bucket", "bucketDomainName", "bucketRegionalDomainName",
                             "hostedZoneId", "region", "tagsAll"),
    "aws:iam/role:Role": ("arn", "name", "uniqueId", "createDate", "tagsAll"),
    "aws:iam/rolePolicy:RolePolicy": ("name",),
    "aws:iam/instanceProfile:InstanceProfile": ("arn", "name", "uniqueId", "createDate",
                                                "tagsAll"),
    "aws:ec2/securityGroup:SecurityGroup": ("arn", "name", "ownerId", "tagsAll"),
    "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule": ("arn", "securityGroupRuleId",
                                                                  "tagsAll"),
    "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule": ("arn", "securityGroupRuleId",
                                                                "tagsAll"),
    "aws:ec2/instance:Instance": ("arn", "availabilityZone", "instanceState", "privateIp",
                                  "privateDns", "publicIp", "publicDns",
                                  "primaryNetworkInterfaceId", "subnetId", "tagsAll"),
}
"""The computed outputs a preview shows as unknown."""


def servicer() -> Servicer:
    """The stand-in aws plugin's gRPC service."""
    return Servicer(CLOUD, VERSION, TYPES, INVOKES, OUTPUTS)


if __name__ == "__main__":
    serve(servicer())

"""Building cloud profiles from `dstack config add aws|gcp|kubernetes ...`, with a check of
their credentials.

The check runs the backend's own checker (imported lazily: it uses the cloud SDKs), so a
profile is only saved when its credentials work, unless the user asks to skip the check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import cast
from urllib.parse import urlencode

from dstack.config.profiles import Profile
from dstack.errors import UsageError
from dstack.lazy import load_target
from dstack.names import slug

CHECKS: dict[str, str] = {
    "aws": "dstack.stacks.credentials:check_aws",
    "gcp": "dstack.stacks.credentials:check_gcp",
    "kubernetes": "dstack.stacks.kube_credentials:check_kubernetes",
}
"""Backend → `module:function` checking a profile's credentials."""

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_STATE = re.compile(r"^(s3|gs|file|azblob)://.+")


def _checker(backend: str) -> Callable[[Mapping[str, str]], dict[str, str]]:
    check = load_target(CHECKS[backend])
    return cast("Callable[[Mapping[str, str]], dict[str, str]]", check)


def _bucket_name(parts: list[str]) -> str:
    return slug("-".join(parts), 63, squeeze=False)


SHARED_STATE = "dstack.stacks.shared_state:shared_state_url"
"""`module:function` creating a team's state bucket and returning its URL."""


def _state(backend: str, settings: dict[str, str], state_url: str | None,
           shared: bool) -> str | None:
    """The profile's state URL: `--state-url`, else with `--shared` the team's state bucket
    (created now when missing), else None (the home's own state)."""
    if not shared:
        return state_url
    make = cast("Callable[[str, Mapping[str, str]], str]", load_target(SHARED_STATE))
    return make(backend, settings)


def _check_common(bucket: str | None, state_url: str | None, shared: bool = False,
                  check: bool = True) -> None:
    if shared and state_url:
        raise UsageError("--shared and --state-url both say where the state goes",
                         "Pass one of them: --shared uses <bucket>-state.")
    if shared and not check:
        raise UsageError("--shared creates the team's state bucket, which needs the "
                         "credentials check", "Drop --skip-check.")
    if bucket is not None and not _BUCKET.match(bucket):
        raise UsageError(f"--bucket {bucket!r} is not a valid bucket name",
                         "Use 3-63 lowercase letters, digits, '-' and '.'.")
    if state_url is not None and not _STATE.match(state_url):
        raise UsageError(f"--state-url {state_url!r} is not a Pulumi state URL",
                         "Use s3://BUCKET/PATH, gs://BUCKET/PATH or file:///PATH.")


def aws_profile(name: str, *, aws_profile: str | None, region: str, bucket: str | None,
                state_url: str | None, shared: bool = False,
                check: bool = True) -> tuple[Profile, dict[str, str]]:
    """An `aws` profile; the identity it resolved to (empty when not checked)."""
    _check_common(bucket, state_url, shared, check)
    if not re.match(r"^[a-z]{2}(-gov)?-[a-z]+-\d$", region):
        raise UsageError(f"--region {region!r} is not an AWS region", "e.g. us-east-1")
    settings = {"region": region}
    if aws_profile:
        settings["aws_profile"] = aws_profile
    identity = _checker("aws")(settings) if check else {}
    if bucket is None:
        if not identity:
            raise UsageError("--bucket is needed when the credentials check is skipped",
                             "Pass --bucket NAME (created on the first run).")
        bucket = _bucket_name(["dstack", identity["account"], region, name])
    query = {"region": region, **({"profile": aws_profile} if aws_profile else {})}
    settings.update(bucket=bucket, store_url=f"s3://{bucket}?{urlencode(query)}")
    state_url = _state("aws", settings, state_url, shared)
    return Profile(name=name, backend="aws", state_url=state_url, settings=settings), identity


def gcp_profile(name: str, *, project: str, zone: str, credentials: str | None,
                bucket: str | None, state_url: str | None, shared: bool = False,
                check: bool = True) -> tuple[Profile, dict[str, str]]:
    """A `gcp` profile; the identity it resolved to (empty when not checked)."""
    _check_common(bucket, state_url, shared, check)
    if not re.match(r"^[a-z]+-[a-z]+\d+-[a-z]$", zone):
        raise UsageError(f"--zone {zone!r} is not a GCP zone", "e.g. us-central1-a")
    if not re.match(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$", project):
        raise UsageError(f"--project {project!r} is not a GCP project id", "e.g. my-ml-123")
    settings = {"project": project, "zone": zone, "region": zone[:-2]}
    if credentials:
        settings["credentials"] = credentials
    identity = _checker("gcp")(settings) if check else {}
    bucket = bucket or _bucket_name(["dstack", project, name])
    settings.update(bucket=bucket, store_url=f"gs://{bucket}?{urlencode({'project': project})}")
    state_url = _state("gcp", settings, state_url, shared)
    return Profile(name=name, backend="gcp", state_url=state_url, settings=settings), identity


def kubernetes_profile(name: str, *, kubeconfig: str, context: str | None,
                       namespace: str | None, store: str, image: str | None,
                       state_url: str | None, check: bool = True
                       ) -> tuple[Profile, dict[str, str]]:
    """A `kubernetes` profile; what the check found (empty when not checked)."""
    from pathlib import Path

    _check_common(None, state_url)
    path = Path(kubeconfig).expanduser()
    if not path.is_file():
        raise UsageError(f"--kubeconfig {kubeconfig}: no such file",
                         "Give the path of the cluster's kubeconfig, e.g. ~/.kube/config.")
    settings = {"kubeconfig": str(path.resolve()), "store_url": store}
    for key, value in (("context", context), ("namespace", namespace), ("image", image)):
        if value:
            settings[key] = value
    found = _checker("kubernetes")(settings) if check else {}
    return Profile(name=name, backend="kubernetes", state_url=state_url,
                   settings=settings), found

"""The store's credentials for a Kubernetes run's pod, and the check of a new Kubernetes
profile.

The profile references credentials, as every profile does: an AWS profile name (the store
URL's `profile`, or the setting `aws_profile`; else boto3's default chain) for an `s3://`
store, a key file (the setting `gcp_credentials`, else `GOOGLE_APPLICATION_CREDENTIALS`) for
a `gs://` one. They are read when a run starts and go only into the run's Secret.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qsl, urlparse

from dstack.config.profiles import Profile
from dstack.errors import UsageError
from dstack.store.base import open_store


def store_credentials(profile: Profile, store_url: str) -> tuple[tuple[str, str], ...]:
    """(NAME, value) pairs the pod's environment gets to open the store."""
    parsed = urlparse(store_url)
    query = dict(parse_qsl(parsed.query))
    if parsed.scheme == "s3":
        import boto3
        import botocore.exceptions as bexc

        name = query.get("profile") or profile.settings.get("aws_profile")
        try:
            creds = boto3.Session(profile_name=str(name) if name else None).get_credentials()
        except bexc.ProfileNotFound as exc:
            raise UsageError(f"there is no AWS profile named {name!r} for the store of "
                             f"profile {profile.name!r}",
                             "Set it up with `aws configure --profile NAME`.") from exc
        if creds is None:
            raise UsageError(f"no AWS credentials for the store of profile {profile.name!r}",
                             "Add `profile=NAME` to the store URL, or set up `aws configure`.")
        frozen = creds.get_frozen_credentials()
        env = [("AWS_ACCESS_KEY_ID", frozen.access_key),
               ("AWS_SECRET_ACCESS_KEY", frozen.secret_key)]
        if frozen.token:
            env.append(("AWS_SESSION_TOKEN", frozen.token))
        region = query.get("region") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            env.append(("AWS_DEFAULT_REGION", region))
        return tuple(env)
    if parsed.scheme == "gs":
        key = profile.settings.get("gcp_credentials") or \
            os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
        if not key:
            raise UsageError(f"no key file for the gs:// store of profile {profile.name!r}",
                             f"`dstack config set {profile.name} gcp_credentials FILE` (a "
                             "service account key that may use the bucket).")
        try:
            text = Path(str(key)).expanduser().read_text()
        except OSError as exc:
            raise UsageError(f"cannot read the key file {key}: {exc.strerror}",
                             f"`dstack config set {profile.name} gcp_credentials FILE`.") from exc
        env = [("DSTACK_GCP_KEY", text)]
        if query.get("project"):
            env.append(("GOOGLE_CLOUD_PROJECT", query["project"]))
        return tuple(env)
    raise UsageError(f"the store of profile {profile.name!r} is {store_url!r}, which pods "
                     "cannot reach", "Use s3://BUCKET (any S3-compatible endpoint) or "
                     "gs://BUCKET.")


def check_kubernetes(settings: dict[str, str]) -> dict[str, str]:
    """Check a new profile: the cluster answers, the namespace exists and may be used, the
    store opens; what it found ({cluster, version, namespace})."""
    from dstack.stacks.kube_api import KubeApi

    url = settings["store_url"]
    if urlparse(url).scheme not in ("s3", "gs"):
        raise UsageError(f"--store {url!r} is not an s3:// or gs:// URL",
                         "The store must be reachable from the pods: s3://BUCKET"
                         "?endpoint_url=URL (any S3-compatible server) or gs://BUCKET.")
    api = KubeApi(settings["kubeconfig"], settings.get("context"), settings.get("namespace"))
    version = api.version()
    missing = api.missing_permissions()
    if missing:
        raise UsageError(f"in namespace {api.namespace!r} of cluster {api.cluster}, the "
                         f"kubeconfig's user may not: {', '.join(missing)}",
                         "Grant them (docs/kubernetes.md has a Role), or choose another "
                         "namespace with --namespace.")
    open_store(url).list("runs/")
    return {"cluster": api.cluster, "version": version, "namespace": api.namespace}

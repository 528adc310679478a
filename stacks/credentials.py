"""Checking a cloud profile's credentials when it is added, and saying what is wrong.

Credentials are referenced (an AWS profile name, a GCP credentials file or the default
application credentials), never copied: these checks only read them.
"""

from __future__ import annotations

from collections.abc import Mapping

from dstack.errors import UsageError


def check_aws(settings: Mapping[str, str]) -> dict[str, str]:
    """STS caller identity of the profile's AWS credentials: {account, arn}."""
    import boto3
    import botocore.exceptions as bexc

    profile, region = settings.get("aws_profile"), settings.get("region")
    fix = (f"Check them with `aws sts get-caller-identity --profile {profile}`; set them up "
           f"with `aws configure --profile {profile}` (or `aws sso login --profile {profile}`)."
           if profile else "Set them up with `aws configure`, or pass --aws-profile NAME.")
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
        ident = session.client("sts").get_caller_identity()
    except bexc.ProfileNotFound:
        raise UsageError(f"there is no AWS profile named {profile!r} in your AWS config",
                         fix) from None
    except bexc.NoCredentialsError:
        raise UsageError(f"AWS profile {profile or 'default'!r} has no credentials", fix) from None
    except bexc.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise UsageError(f"AWS rejected the credentials of profile {profile or 'default'!r} "
                         f"({code}: {exc.response.get('Error', {}).get('Message', '')})",
                         fix) from None
    except bexc.BotoCoreError as exc:
        raise UsageError(f"could not reach AWS STS in {region}: {exc}",
                         "Check the network and the --region.") from None
    return {"account": str(ident["Account"]), "arn": str(ident["Arn"])}


def gcp_credentials(settings: Mapping[str, str], fix: str,
                     scopes: list[str] | None = None) -> object:
    """The profile's GCP credentials: its key file (`credentials`), else the
    application-default ones; a UsageError with `fix` when there are none usable."""
    import google.auth
    import google.auth.exceptions as gexc

    try:
        if settings.get("credentials"):
            creds, _ = google.auth.load_credentials_from_file(  # type: ignore[no-untyped-call]
                settings["credentials"], scopes=scopes)  # (google-auth leaves it unannotated)
        else:
            creds, _ = google.auth.default(scopes=scopes)
    except (gexc.DefaultCredentialsError, OSError, ValueError) as exc:
        raise UsageError(f"no usable GCP credentials: {exc}", fix) from None
    return creds


def gcp_account(settings: Mapping[str, str]) -> str:
    """The account of the profile's GCP credentials: a service account's email; for a user's
    application-default credentials (which name no account), `<local user> (gcloud)`."""
    import getpass

    creds = gcp_credentials(settings, "Run `gcloud auth application-default login`, or add "
                                       "the profile again with --credentials FILE.")
    email = getattr(creds, "service_account_email", None)
    return str(email) if email else f"{getpass.getuser()} (gcloud)"


def check_gcp(settings: Mapping[str, str]) -> dict[str, str]:
    """Load the GCP credentials and check the project is reachable: {project, account}."""
    import google.auth.exceptions as gexc
    from google.api_core import exceptions as api_exc
    from google.cloud import storage

    project = settings["project"]
    creds = gcp_credentials(settings, "Run `gcloud auth application-default login`, or pass "
                                       "--credentials FILE (a service account key).",
                             scopes=["https://www.googleapis.com/auth/cloud-platform"])
    try:
        list(storage.Client(project=project, credentials=creds).list_buckets(max_results=1))
    except api_exc.Forbidden:
        raise UsageError(f"the GCP credentials cannot use project {project!r}",
                         "Grant them roles/storage.admin and roles/compute.admin on it, or "
                         "check --project.") from None
    except api_exc.NotFound:
        raise UsageError(f"GCP project {project!r} was not found", "Check --project.") from None
    except (api_exc.GoogleAPIError, gexc.GoogleAuthError) as exc:
        raise UsageError(f"could not reach GCP project {project!r}: {exc}",
                         "Check the network and the credentials.") from None
    account = getattr(creds, "service_account_email", None) or "application default"
    return {"project": project, "account": str(account)}

"""`dstack config add|set|list|show|remove|default`: profiles (local, aws, gcp,
kubernetes)."""

from __future__ import annotations

from typing import Annotated

import typer

from dstack.cli import output
from dstack.cli.options import JsonOpt, Yes, confirm
from dstack.home import dstack_home, private_dir

config_app = typer.Typer(help="Profiles: where runs go (local, aws, gcp, kubernetes).",
                         no_args_is_help=True)
add_app = typer.Typer(help="Add a profile.", no_args_is_help=True)
config_app.add_typer(add_app, name="add")

Name = Annotated[str, typer.Argument(help="The profile's name.")]
Bucket = Annotated[str | None, typer.Option("--bucket", help="Bucket for artifacts and "
                                                              "metadata (created on first use).")]
StateUrl = Annotated[str | None, typer.Option("--state-url", help="Pulumi state backend "
                                                                  "(s3://..., gs://...).")]
Shared = Annotated[bool, typer.Option("--shared", help="Keep the Pulumi state in the team's "
                                      "state bucket (<bucket>-state, created if missing): "
                                      "teammates who add the profile the same way share its "
                                      "runs, tags, artifacts and audit.")]
Default = Annotated[bool, typer.Option("--default", help="Make it the default profile.")]
SkipCheck = Annotated[bool, typer.Option("--skip-check", help="Do not check the credentials.")]


def _saved(profile: object, identity: dict[str, str], default: bool) -> None:
    from dstack.config.profiles import Profile, add_profile

    assert isinstance(profile, Profile)
    add_profile(private_dir(dstack_home()), profile, make_default=default)
    who = ", ".join(f"{k} {v}" for k, v in identity.items())
    output.say(f"added profile {profile.name} ({profile.backend})" + (f": {who}" if who else ""))
    if profile.state_url:
        output.say(f"its Pulumi state: {profile.state_url}")


@add_app.command("aws")
def add_aws(
    name: Name,
    region: Annotated[str, typer.Option("--region", help="AWS region, e.g. us-east-1.")],
    aws_profile: Annotated[str | None, typer.Option("--aws-profile",
                                                    help="Profile in your AWS config.")] = None,
    bucket: Bucket = None, state_url: StateUrl = None, shared: Shared = False,
    default: Default = False, skip_check: SkipCheck = False,
) -> None:
    """An AWS profile; its credentials are checked with STS now."""
    from dstack.config.cloud_profiles import aws_profile as build

    profile, identity = build(name, aws_profile=aws_profile, region=region, bucket=bucket,
                              state_url=state_url, shared=shared, check=not skip_check)
    _saved(profile, identity, default)


@add_app.command("gcp")
def add_gcp(
    name: Name,
    project: Annotated[str, typer.Option("--project", help="GCP project id.")],
    zone: Annotated[str, typer.Option("--zone", help="GCP zone, e.g. us-central1-a.")],
    credentials: Annotated[str | None, typer.Option(
        "--credentials", help="Service account key file (default: application credentials)."
    )] = None,
    bucket: Bucket = None, state_url: StateUrl = None, shared: Shared = False,
    default: Default = False, skip_check: SkipCheck = False,
) -> None:
    """A GCP profile; the project is checked to be reachable now."""
    from dstack.config.cloud_profiles import gcp_profile as build

    profile, identity = build(name, project=project, zone=zone, credentials=credentials,
                              bucket=bucket, state_url=state_url, shared=shared,
                              check=not skip_check)
    _saved(profile, identity, default)


@add_app.command("kubernetes")
def add_kubernetes(
    name: Name,
    kubeconfig: Annotated[str, typer.Option("--kubeconfig", help="The cluster's kubeconfig "
                                            "file (read where it is, never copied).")],
    store: Annotated[str, typer.Option("--store", help="Where runs, logs and artifacts live, "
                                       "reachable from the pods: s3://BUCKET[?endpoint_url=URL"
                                       "&profile=AWS_PROFILE] or gs://BUCKET.")],
    context: Annotated[str | None, typer.Option("--context", help="The kubeconfig context "
                                                "(default: its current one).")] = None,
    namespace: Annotated[str | None, typer.Option("--namespace", help="Where the pods go "
                                                  "(default: the context's, else default).")
                         ] = None,
    image: Annotated[str | None, typer.Option("--image", help="The pods' image; it needs bash "
                                              "and python3 (default: python:3.11-slim).")] = None,
    state_url: StateUrl = None, default: Default = False, skip_check: SkipCheck = False,
) -> None:
    """A Kubernetes profile; the cluster, the namespace and the store are checked now."""
    from dstack.config.cloud_profiles import kubernetes_profile as build

    profile, found = build(name, kubeconfig=kubeconfig, context=context, namespace=namespace,
                           store=store, image=image, state_url=state_url, check=not skip_check)
    _saved(profile, found, default)


@add_app.command("local")
def add_local(name: Name, default: Default = False) -> None:
    """Another local profile (its own store folder under the dstack home)."""
    from dstack.config.profiles import Profile

    home = dstack_home()
    _saved(Profile(name=name, backend="local",
                   settings={"store": str(home / "stores" / name)}), {}, default)


@config_app.command("list")
def list_cmd(json_out: JsonOpt = False) -> None:
    """List profiles."""
    from dstack.config.profiles import load_profiles

    profiles, default = load_profiles(dstack_home())
    rows = [{"name": p.name, "backend": p.backend, "default": p.name == default,
             "region": p.settings.get("region") or p.settings.get("zone") or
             p.settings.get("namespace") or "",
             "store": p.settings.get("store_url") or p.settings.get("store") or "",
             "state": p.state_url or "local file backend"} for p in profiles.values()]
    if json_out:
        output.print_json(rows)
        return
    output.table(["PROFILE", "BACKEND", "DEFAULT", "REGION", "STORE", "STATE"],
                 [[str(r["name"]), str(r["backend"]), "*" if r["default"] else "",
                   str(r["region"]), str(r["store"]), str(r["state"])] for r in rows])


@config_app.command("show")
def show(name: Name) -> None:
    """Show one profile."""
    from dstack.config.profiles import get_profile

    output.print_json(get_profile(dstack_home(), name).model_dump())


@config_app.command("set")
def set_cmd(
    name: Name,
    key: Annotated[str, typer.Argument(help="A setting, e.g. ami, max_duration, caller_cidr.")],
    value: Annotated[str | None, typer.Argument(help="Its value.")] = None,
    unset: Annotated[bool, typer.Option("--unset", help="Remove the setting.")] = False,
) -> None:
    """Set one setting of a profile (`dstack config set gpu max_duration 8h`)."""
    from dstack.config.profiles import set_setting
    from dstack.errors import UsageError

    if (value is None) != unset:
        raise UsageError("give either VALUE or --unset",
                         f"`dstack config set {name} {key} VALUE`, or `dstack config set {name} "
                         f"{key} --unset`.")
    set_setting(private_dir(dstack_home()), name, key, value)
    output.say(f"profile {name}: {key} " + ("removed" if unset else f"= {value}"))


@config_app.command("remove")
def remove(name: Name, yes: Yes = False) -> None:
    """Remove a profile (its bucket and runs stay)."""
    from dstack.config.profiles import remove_profile

    confirm(f"Remove profile {name}?", yes)
    remove_profile(dstack_home(), name)
    output.say(f"removed profile {name}")


@config_app.command("default")
def default_cmd(name: Name) -> None:
    """Make a profile the default."""
    from dstack.config.profiles import set_default

    set_default(dstack_home(), name)
    output.say(f"default profile: {name}")

"""Profiles: where runs go. `local` is the default and needs no configuration.

`<dstack home>/config.yaml` holds named profiles (names, regions and references to the
user's credentials, never the credentials themselves) and the default profile's name.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dstack.durations import duration_s
from dstack.errors import NotFoundError, UsageError
from dstack.home import write_private
from dstack.json_types import JsonDoc
from dstack.names import did_you_mean
from dstack.sizes import SizeError, parse_size

PROFILE_NAME = r"^[a-z][a-z0-9-]{0,39}$"


class Profile(BaseModel):
    """A named place to run: a backend and its settings."""

    model_config = ConfigDict(extra="forbid", defer_build=True)
    name: str
    backend: str = Field(description="local, aws or gcp.")
    state_url: str | None = Field(None, description="Pulumi state backend URL.")
    settings: JsonDoc = Field(default_factory=dict,
                              description="Backend settings (region, bucket, ...).")


LOCAL = Profile.model_construct(name="local", backend="local")
"""The built-in profile (constructed, not validated: a command of a home without a config file
builds no validator, and pydantic does not look for its plugins)."""


def config_path(home: Path) -> Path:
    """The profiles file under the dstack home."""
    return home / "config.yaml"


def load_profiles(home: Path) -> tuple[dict[str, Profile], str]:
    """Every profile (with the built-in `local`) and the default profile's name."""
    path = config_path(home)
    profiles = {"local": LOCAL}
    default = "local"
    if path.exists():
        import yaml  # only a home with profiles besides `local` pays for it

        try:
            doc = yaml.safe_load(path.read_text()) or {}
            for name, body in (doc.get("profiles") or {}).items():
                profiles[name] = Profile.model_validate({"name": name, **body})
            default = doc.get("default") or default
        except (yaml.YAMLError, ValidationError, AttributeError, TypeError) as exc:
            raise UsageError(f"{path} is not a valid dstack config: {exc}",
                             "Fix or remove the file; `dstack config list` shows "
                             "profiles.") from exc
    return profiles, default


def get_profile(home: Path, name: str | None) -> Profile:
    """The profile called `name`, or the default one."""
    profiles, default = load_profiles(home)
    wanted = name or default
    if wanted not in profiles:
        raise UsageError(f"no profile named {wanted!r}",
                         did_you_mean(wanted, profiles) or
                         f"Profiles: {', '.join(profiles)}. Add one with `dstack config add`.")
    return profiles[wanted]


def store_url(profile: Profile, home: Path) -> str:
    """Where the profile's store is: a folder for local, the profile's bucket otherwise."""
    if profile.backend == "local":
        return f"file://{Path(profile.settings.get('store', home / 'store'))}"
    url = profile.settings.get("store_url")
    if not url:
        raise UsageError(f"profile {profile.name!r} names no store",
                         f"Add it again: `dstack config add {profile.backend} {profile.name} ...`.")
    return str(url)


def workspace_record(home: Path, profile: Profile) -> Path:
    """Where a cloud profile's backend records its workspace stack's outputs once it is up
    (the store's bucket exists from then on)."""
    return home / "pulumi" / f"workspace-{profile.name}.json"


SETTINGS: dict[str, tuple[str, ...]] = {
    "local": ("store", "max_code_size"),
    "aws": ("region", "aws_profile", "bucket", "store_url", "kms_key_id", "vpc_id", "subnet_id",
            "ami", "public_ip", "caller_cidr", "max_duration", "wheel", "max_code_size",
            "heartbeat_timeout", "lock_timeout"),
    "gcp": ("project", "region", "zone", "credentials", "bucket", "store_url",
            "bucket_location", "kms_key", "network", "subnetwork", "image", "secure_boot",
            "service_account_id", "caller_cidr", "max_duration", "wheel", "max_code_size",
            "heartbeat_timeout", "lock_timeout"),
    "kubernetes": ("kubeconfig", "context", "namespace", "store_url", "image", "caller_cidr",
                   "schedule_timeout", "max_duration", "aws_profile", "gcp_credentials",
                   "wheel", "max_code_size", "heartbeat_timeout", "lock_timeout"),
}
"""The settings each backend reads (docs/clouds.md and docs/kubernetes.md say what each does;
`max_code_size`,
default 100MB, is the most a run's packaged code may hold)."""
SIZES = ("max_code_size",)
"""Settings that are sizes (`500MB`), checked when set."""
DURATIONS: dict[str, float] = {"heartbeat_timeout": 180.0, "lock_timeout": 1800.0}
"""Settings that are durations (`3m`), checked when set, with their defaults in seconds:
how old a runner's last heartbeat must be before its run counts as gone (from any machine),
and how old another machine's engine lock must be before it may be cleared."""


def _positive_s(value: object) -> float | None:
    """Seconds of a duration setting's value; None unless it is a duration over zero."""
    seconds = duration_s(value)
    return seconds if seconds is not None and seconds > 0 else None


def duration_setting(profile: Profile, key: str) -> float:
    """The duration setting `key` of `profile` in seconds (its default when unset)."""
    value = profile.settings.get(key)
    if value in (None, ""):
        return DURATIONS[key]
    seconds = _positive_s(value)
    if seconds is None:
        raise UsageError(f"profile {profile.name!r}: {key} {value!r} is not a duration",
                         f"For example: `dstack config set {profile.name} {key} 5m`.")
    return seconds
FIXED = ("region", "zone", "project", "aws_profile", "credentials", "bucket", "store_url")
"""Settings `dstack config add` derives the store from: changed by adding the profile again."""


def set_setting(home: Path, name: str, key: str, value: str | None) -> Profile:
    """Set (or with None remove) one setting of profile `name`; the updated profile."""
    profiles, default = load_profiles(home)
    profile = get_profile(home, name)
    known = SETTINGS.get(profile.backend, ())
    if key not in known:
        raise UsageError(f"{profile.backend} profiles have no setting {key!r}",
                         did_you_mean(key, known) or f"Settings: {', '.join(known)}.")
    if key in FIXED:
        raise UsageError(f"{key} is where profile {name!r} keeps its runs; it is not changed "
                         "in place", f"Add the profile again: `dstack config add "
                         f"{profile.backend} {name} ...`.")
    if key in DURATIONS and value is not None and _positive_s(value) is None:
        raise UsageError(f"{key}: {value!r} is not a duration",
                         f"For example: `dstack config set {name} {key} 5m`.")
    if key in SIZES and value is not None:
        try:
            parse_size(value)
        except SizeError as exc:
            raise UsageError(f"{key}: {exc.message}", f"For example: `dstack config set "
                             f"{name} {key} 500MB`.") from None
    settings = {k: v for k, v in profile.settings.items() if k != key}
    if value is not None:
        settings[key] = value
    profiles[name] = profile.model_copy(update={"settings": settings})
    save_profiles(home, profiles, default)
    return profiles[name]


def save_profiles(home: Path, profiles: dict[str, Profile], default: str) -> None:
    """Write the profiles (all but the built-in `local`) to config.yaml, 0600."""
    import yaml

    doc = {
        "default": default,
        "profiles": {
            name: p.model_dump(exclude={"name"}, exclude_none=True)
            for name, p in profiles.items() if p != LOCAL
        },
    }
    write_private(config_path(home), yaml.safe_dump(doc, sort_keys=True).encode())


def add_profile(home: Path, profile: Profile, make_default: bool = False) -> None:
    """Add (or replace) a profile."""
    if not re.match(PROFILE_NAME, profile.name):
        raise UsageError(f"invalid profile name {profile.name!r}",
                         "Use lowercase letters, digits and '-', starting with a letter.")
    profiles, default = load_profiles(home)
    if profile.name == "local" and profile.backend != "local":
        raise UsageError("the profile name 'local' is the built-in local backend",
                         "Choose another name.")
    profiles[profile.name] = profile
    save_profiles(home, profiles, profile.name if make_default else default)


def remove_profile(home: Path, name: str) -> None:
    """Remove a profile; the default falls back to `local`."""
    profiles, default = load_profiles(home)
    if name == "local":
        raise UsageError("the built-in local profile cannot be removed")
    if name not in profiles:
        raise NotFoundError(f"no profile named {name!r}",
                            did_you_mean(name, profiles) or "`dstack config list` shows them.")
    del profiles[name]
    save_profiles(home, profiles, "local" if default == name else default)


def set_default(home: Path, name: str) -> None:
    """Make `name` the default profile."""
    profiles, _ = load_profiles(home)
    get_profile(home, name)
    save_profiles(home, profiles, name)

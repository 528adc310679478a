"""Profiles: where runs go. `local` is the default and needs no configuration.

`<dstack home>/config.yaml` holds named profiles (names, regions and references to the
user's credentials, never the credentials themselves) and the default profile's name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dstack.errors import UsageError
from dstack.names import did_you_mean


class Profile(BaseModel):
    """A named place to run: a backend and its settings."""

    model_config = ConfigDict(extra="forbid")
    name: str
    backend: str = Field(description="local, aws or gcp.")
    state_url: str | None = Field(None, description="Pulumi state backend URL.")
    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="Backend settings (region, bucket, ...).")


LOCAL = Profile(name="local", backend="local")


def config_path(home: Path) -> Path:
    """The profiles file under the dstack home."""
    return home / "config.yaml"


def load_profiles(home: Path) -> tuple[dict[str, Profile], str]:
    """Every profile (with the built-in `local`) and the default profile's name."""
    path = config_path(home)
    profiles = {"local": LOCAL}
    default = "local"
    if path.exists():
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

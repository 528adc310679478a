"""The caller's public address: the only source a cloud run's app ports are opened to."""

from __future__ import annotations

import ipaddress
import os
import urllib.request
from collections.abc import Callable

from dstack.config.profiles import Profile
from dstack.errors import BackendError, UsageError

CALLER_ENV = "DSTACK_CALLER_CIDR"
CHECKIP_URL = "https://checkip.amazonaws.com"
CHECKIP_TIMEOUT_S = 5.0


def normalize_cidr(text: str, origin: str) -> str:
    """`text` as a network (a bare address becomes /32 or /128); the whole internet refused."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise UsageError(f"{origin} gives {text!r}, which is not an IP address or CIDR",
                         "Give your public address, e.g. 203.0.113.7 or 203.0.113.7/32.") from exc
    if net.prefixlen == 0:
        raise UsageError(f"{origin} gives {net}, which opens app ports to the whole internet",
                         "Give your own public address (/32) or your network's range.")
    return str(net)


def caller_cidr(profile: Profile, fetch: Callable[[], str] | None = None) -> str:
    """The caller's public address as a CIDR, the only source app ports are opened to.

    Env `DSTACK_CALLER_CIDR`, else the profile setting `caller_cidr`, else the address
    `https://checkip.amazonaws.com` sees (asked with a short timeout).
    """
    if os.environ.get(CALLER_ENV):
        return normalize_cidr(os.environ[CALLER_ENV], f"${CALLER_ENV}")
    if profile.settings.get("caller_cidr"):
        return normalize_cidr(str(profile.settings["caller_cidr"]),
                              f"the caller_cidr setting of profile {profile.name!r}")
    try:
        text = (fetch or _checkip)()
    except OSError as exc:
        raise BackendError(f"could not learn your public address from {CHECKIP_URL}: {exc}",
                           f"Set {CALLER_ENV} (or the profile's caller_cidr) to your public "
                           "address; app ports are opened to it only.") from exc
    return normalize_cidr(text, CHECKIP_URL)


def planned_caller(profile: Profile) -> str:
    """The caller's address for a plan, without asking the network (`--dry-run`)."""
    if os.environ.get(CALLER_ENV) or profile.settings.get("caller_cidr"):
        return caller_cidr(profile, fetch=lambda: "")
    return "your public address /32 (looked up when the run starts)"


def _checkip() -> str:
    with urllib.request.urlopen(CHECKIP_URL, timeout=CHECKIP_TIMEOUT_S) as resp:
        return str(resp.read(64).decode("ascii", "replace")).strip()
